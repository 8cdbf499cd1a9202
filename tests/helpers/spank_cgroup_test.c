/*
 * find_job_cgroup of contrib/slurm/spank_tracker.c on the /proc/PID/cgroup texts of Slurm's
 * cgroup/v1 and cgroup/v2 layouts. Built and run by tests/tests/slurm.rs; prints one line per
 * failed case and exits 1 if any failed. Slurm's functions are stubs: only the parser runs.
 */
#include "../../contrib/slurm/spank_tracker.c"

void slurm_error(const char *fmt, ...) { (void)fmt; }
void slurm_debug(const char *fmt, ...) { (void)fmt; }
spank_err_t spank_get_item(spank_t sp, spank_item_t item, ...) {
    (void)sp;
    (void)item;
    return ESPANK_ERROR;
}
const char *spank_strerror(spank_err_t e) {
    (void)e;
    return "";
}
spank_context_t spank_context(void) { return S_CTX_ERROR; }

static int failures;

static void check(const char *text, uint32_t job, const char *want) {
    char copy[4096], got[256];
    snprintf(copy, sizeof copy, "%s", text);
    int r = find_job_cgroup(copy, job, got, sizeof got);
    const char *have = r == 0 ? got : "(none)";
    if (strcmp(have, want) != 0) {
        printf("job %u: got %s, want %s, from:\n%s\n", job, have, want, text);
        failures++;
    }
}

int main(void) {
    /* cgroup/v1 on a hybrid host, as this machine's Slurm makes it (slurmd built for several
     * per host: slurm_<node>), the cgroup2 line elsewhere. */
    check("12:cpuset:/slurm_vm/uid_0/job_42/step_0\n"
          "6:freezer:/slurm_vm/uid_0/job_42/step_0\n"
          "4:memory:/slurm_vm/uid_0/job_42/step_0/task_0\n"
          "1:name=systemd:/\n0::/\n",
          42, "slurm_vm/uid_0/job_42");
    /* cgroup/v2 on a pure v2 host. */
    check("0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n", 7,
          "system.slice/slurmstepd.scope/job_7");
    /* The cgroup2 line wins over v1 lines. */
    check("4:memory:/slurm/uid_0/job_7/step_0\n0::/sys/slurmstepd.scope/job_7/step_0/slurm\n", 7,
          "sys/slurmstepd.scope/job_7");
    /* Another job's cgroup, or one whose id only starts the same, is not this job's. */
    check("4:memory:/slurm/uid_0/job_420/step_0\n0::/\n", 42, "(none)");
    check("4:memory:/slurm/uid_0/job_4/step_0\n", 42, "(none)");
    /* No job cgroup at all (proctrack/pgid). */
    check("0::/user.slice/session-1.scope\n", 42, "(none)");
    check("", 42, "(none)");
    /* A job cgroup that is the task's own (no step below it). */
    check("0::/batch/job_9\n", 9, "batch/job_9");
    return failures ? 1 : 0;
}
