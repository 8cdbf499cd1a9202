/*
 * spank_tracker: put every task of a Slurm job into the job's tracker slot, `slurm-<jobid>`,
 * before the task's program runs, so that everything it ever forks is tagged in the kernel
 * and dies with `tracker kill` in the Epilog (contrib/slurm/epilog.sh).
 *
 * The slot is bound to the job's own cgroup, the one Slurm made (proctrack/cgroup,
 * task/cgroup): the tracker only tags, nothing is moved out of Slurm's cgroups, so Slurm's
 * limits, process tracking and accounting keep holding the job.
 *
 * - slurm_spank_task_init_privileged (root, inside the task's own process, before exec):
 *   1. `tracker create slurm-<jobid> --owner <uid> --exist-ok --cgroup <job cgroup>`, the job
 *      cgroup read from the task's own /proc/self/cgroup, up to its `job_<jobid>` component
 *      (`slurm/uid_U/job_J` under cgroup/v1, `.../slurmstepd.scope/job_J` under cgroup/v2).
 *      Every task of every step of the job shares the slot: the first one makes it. A task in
 *      no job cgroup (proctrack/pgid) gets a slot with cgroups of the tracker's own.
 *   2. `tracker adopt slurm-<jobid> <pid of the task>`. The tracker runs as a child of the
 *      task and adopts its own parent: the adopt iterator never tags the process running it.
 *   If either fails, the hook fails and slurmstepd exits the task before exec: an untracked
 *   task is what this plugin exists to prevent.
 * - slurm_spank_task_init (same process, as the user, just before exec): fails too if adopt
 *   failed, so that a Slurm that only logs a failed privileged hook still stops the task.
 * - slurm_spank_init only checks the options, so that a typo fails the step at once.
 *
 * Hooks fail by returning a negative number. Slurm 22.05 logs a positive one, such as
 * ESPANK_ERROR (3000), as "failed with rc=3000" and then runs the task anyway.
 *
 * plugstack.conf options (all optional):
 *   tracker=PATH      the tracker binary (default /usr/local/bin/tracker; /usr/bin/tracker
 *                     in the .deb and .rpm packages)
 *   instance=NAME     the tracker instance (`tracker --instance NAME`; default: the default one)
 *   timeout=SECONDS   how long one tracker command may take before it is killed (default 60)
 *
 * Build: gcc -Wall -Werror -shared -fPIC -o spank_tracker.so spank_tracker.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <slurm/spank.h>

SPANK_PLUGIN(tracker, 1);

/* The packages build with -DDEFAULT_TRACKER='"/usr/bin/tracker"'; build-and-load installs here. */
#ifndef DEFAULT_TRACKER
#define DEFAULT_TRACKER "/usr/local/bin/tracker"
#endif
#define DEFAULT_TIMEOUT_S 60
#define OUTPUT_MAX 1024

struct config {
    const char *tracker;
    const char *instance;
    int timeout_s;
};

static int parse_config(int ac, char **av, struct config *c) {
    c->tracker = DEFAULT_TRACKER;
    c->instance = NULL;
    c->timeout_s = DEFAULT_TIMEOUT_S;
    for (int i = 0; i < ac; i++) {
        if (strncmp(av[i], "tracker=", 8) == 0) {
            c->tracker = av[i] + 8;
            /* This runs as root: never let PATH decide which binary that is. */
            if (c->tracker[0] != '/') {
                slurm_error("spank_tracker: tracker=%s: give an absolute path", c->tracker);
                return -1;
            }
        } else if (strncmp(av[i], "instance=", 9) == 0) {
            c->instance = av[i] + 9;
            if (c->instance[0] == '\0') c->instance = NULL;
        } else if (strncmp(av[i], "timeout=", 8) == 0) {
            char *end;
            long t = strtol(av[i] + 8, &end, 10);
            if (*end != '\0' || t <= 0 || t > 3600) {
                slurm_error("spank_tracker: %s: give a number of seconds (1-3600)", av[i]);
                return -1;
            }
            c->timeout_s = (int)t;
        } else {
            slurm_error("spank_tracker: unknown option \"%s\" (known: tracker= instance= "
                        "timeout=)",
                        av[i]);
            return -1;
        }
    }
    return 0;
}

/* Close every descriptor from `low` up. */
static void close_from(int low) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)low, ~0U, 0) == 0) return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = low; fd < (max > 0 ? max : 4096); fd++) close((int)fd);
}

/* "cannot run PATH (errno N)" on stdout, with no stdio: this runs between fork and exec. */
static void write_exec_error(const char *path, int err) {
    char num[16];
    int i = sizeof num;
    unsigned u = (unsigned)err;
    do {
        num[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u && i > 0);
    ssize_t ignored = write(1, "cannot run ", 11);
    ignored = write(1, path, strlen(path));
    ignored = write(1, " (errno ", 8);
    ignored = write(1, num + i, sizeof num - (size_t)i);
    ignored = write(1, ")", 1);
    (void)ignored;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Run `tracker [--instance NAME] ARGS...` with its stdout and stderr captured into `out`.
 * Returns its exit status, or -1 if it could not run, was killed, or outran the timeout
 * (then `out` says why).
 */
static int run_tracker(const struct config *c, const char *const *args, char *out,
                       size_t outlen) {
    const char *argv[16];
    size_t n = 0;
    argv[n++] = c->tracker;
    if (c->instance) {
        argv[n++] = "--instance";
        argv[n++] = c->instance;
    }
    for (size_t i = 0; args[i] && n < 15; i++) argv[n++] = args[i];
    argv[n] = NULL;
    /* A fixed environment: slurmstepd's own (TRACKER_INSTANCE, TRACKER_LOG...) must not
     * change which tracker answers or what it prints. */
    char *const envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                          NULL};

    out[0] = '\0';
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        snprintf(out, outlen, "pipe: %s", strerror(errno));
        return -1;
    }
    /* slurmstepd may ignore SIGCHLD, and then the kernel reaps the child before we can read
     * its status. */
    struct sigaction dfl = {.sa_handler = SIG_DFL}, old_chld;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGCHLD, &dfl, &old_chld);

    pid_t pid = fork();
    if (pid < 0) {
        snprintf(out, outlen, "fork: %s", strerror(errno));
        close(pipefd[0]);
        close(pipefd[1]);
        sigaction(SIGCHLD, &old_chld, NULL);
        return -1;
    }
    if (pid == 0) {
        /* Between fork and exec in a threaded slurmstepd: async-signal-safe calls only. */
        /* Its own process group, so that a timeout kills whatever it started too. */
        setpgid(0, 0);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, 0);
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        /* Slurm's sockets and files are none of the tracker's business. */
        close_from(3);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        execve(c->tracker, (char *const *)argv, envp);
        write_exec_error(c->tracker, errno);
        _exit(127);
    }
    close(pipefd[1]);

    size_t len = 0;
    int timed_out = 0;
    long long deadline = now_ms() + (long long)c->timeout_s * 1000;
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd p = {.fd = pipefd[0], .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            timed_out = r == 0;
            break;
        }
        char buf[256];
        ssize_t got = read(pipefd[0], buf, sizeof buf);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        /* Keep the beginning: the error line comes first; drop what does not fit. */
        size_t keep = (size_t)got;
        if (keep > outlen - 1 - len) keep = outlen - 1 - len;
        memcpy(out + len, buf, keep);
        len += keep;
        out[len] = '\0';
    }
    close(pipefd[0]);
    if (timed_out) kill(-pid, SIGKILL);

    int status = 0;
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
    }
    sigaction(SIGCHLD, &old_chld, NULL);
    while (len > 0 && (out[len - 1] == '\n' || out[len - 1] == ' ')) out[--len] = '\0';

    if (timed_out) {
        snprintf(out, outlen, "%s did not finish in %d s (killed)", c->tracker, c->timeout_s);
        return -1;
    }
    if (w < 0) {
        snprintf(out, outlen, "waitpid: %s", strerror(errno));
        return -1;
    }
    if (WIFSIGNALED(status)) {
        snprintf(out + len, outlen - len, "%s(killed by signal %d)", len ? " " : "",
                 WTERMSIG(status));
        return -1;
    }
    return WEXITSTATUS(status);
}

static int job_id(spank_t sp, uint32_t *jobid) {
    spank_err_t e = spank_get_item(sp, S_JOB_ID, jobid);
    if (e != ESPANK_SUCCESS) {
        slurm_error("spank_tracker: cannot get the job id: %s", spank_strerror(e));
        return -1;
    }
    return 0;
}

/*
 * The job's cgroup, relative to the hierarchy roots, from the text of a /proc/PID/cgroup
 * ("ID:CONTROLLERS:PATH" lines, changed in place): PATH up to its `job_<jobid>` component,
 * without the leading slash. The cgroup2 line wins where it has one (Slurm's cgroup/v2), else
 * the first v1 line that has one (cgroup/v1 makes the same path in every controller).
 * Returns 0 when found.
 */
static int find_job_cgroup(char *text, uint32_t jobid, char *buf, size_t len) {
    char want[32];
    snprintf(want, sizeof want, "/job_%u", jobid);
    size_t wlen = strlen(want);
    int found = -1;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *path = strchr(line, ':');
        if (!path || !(path = strchr(path + 1, ':'))) continue;
        path++;
        int v2 = strncmp(line, "0::", 3) == 0;
        for (char *at = strstr(path, want); at; at = strstr(at + 1, want)) {
            if (at[wlen] != '/' && at[wlen] != '\0') continue;
            size_t n = (size_t)(at + wlen - path) - 1;
            if (n + 1 > len) return -1;
            if (found < 0 || v2) {
                memcpy(buf, path + 1, n);
                buf[n] = '\0';
                found = 0;
            }
            break;
        }
        if (v2 && found == 0) break;
    }
    return found;
}

/* The job's cgroup from this process's own /proc/self/cgroup (see find_job_cgroup). */
static int job_cgroup(uint32_t jobid, char *buf, size_t len) {
    char text[8192];
    int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t have = 0;
    for (;;) {
        ssize_t got = read(fd, text + have, sizeof text - 1 - have);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        have += (size_t)got;
        if (have == sizeof text - 1) break;
    }
    close(fd);
    if (have == 0) return -1;
    text[have] = '\0';
    return find_job_cgroup(text, jobid, buf, len);
}

/* Only the options: a typo fails the step before any task starts. */
int slurm_spank_init(spank_t sp, int ac, char **av) {
    (void)sp;
    if (spank_context() != S_CTX_REMOTE) return ESPANK_SUCCESS;
    struct config c;
    return parse_config(ac, av, &c) < 0 ? -1 : ESPANK_SUCCESS;
}

/* Set in the task's own process unless adopt succeeded, for slurm_spank_task_init to see. */
static int adopt_failed;

/* Inside the task's own process, as root, before it becomes the user and execs. */
int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av) {
    if (spank_context() != S_CTX_REMOTE) return ESPANK_SUCCESS;
    struct config c;
    uint32_t jobid = 0;
    uid_t uid = 0;
    char slot[64], owner[16], pid[16], cgroup[1024], out[OUTPUT_MAX];
    adopt_failed = 1;
    if (parse_config(ac, av, &c) < 0 || job_id(sp, &jobid) < 0) return -1;
    snprintf(slot, sizeof slot, "slurm-%u", jobid);
    if (spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS) uid = 0;
    snprintf(owner, sizeof owner, "%u", (unsigned)uid);
    snprintf(pid, sizeof pid, "%d", (int)getpid());

    const char *create[] = {"create", slot, "--owner", owner, "--exist-ok", NULL, NULL, NULL};
    int bound = job_cgroup(jobid, cgroup, sizeof cgroup) == 0;
    if (bound) {
        create[5] = "--cgroup";
        create[6] = cgroup;
    }
    int st = run_tracker(&c, create, out, sizeof out);
    if (st != 0) {
        slurm_error("spank_tracker: cannot create slot %s, not running task pid %s: %s", slot,
                    pid, out);
        return -1;
    }
    slurm_debug("spank_tracker: slot %s ready (%s%s)", slot, bound ? "bound to cgroup " : "",
                bound ? cgroup : "own cgroups");

    const char *adopt[] = {"adopt", slot, pid, NULL};
    st = run_tracker(&c, adopt, out, sizeof out);
    if (st != 0) {
        slurm_error("spank_tracker: cannot put task pid %s into slot %s, not running it: %s",
                    pid, slot, out);
        return -1;
    }
    adopt_failed = 0;
    slurm_debug("spank_tracker: %s", out);
    return ESPANK_SUCCESS;
}

/* Same process, now as the user, right before exec: the last point that can stop the task. */
int slurm_spank_task_init(spank_t sp, int ac, char **av) {
    (void)sp;
    (void)ac;
    (void)av;
    return adopt_failed ? -1 : ESPANK_SUCCESS;
}
