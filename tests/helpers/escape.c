/*
 * The escape artist: every trick a job uses to leave its batch system's tracking, one per
 * mode, so that the tests can check that each one stays in its slot and dies with it.
 * Built by tests/build.rs. Processes name themselves (prctl PR_SET_NAME) after the marker
 * given on the command line, so a test can find any survivor anywhere on the machine.
 *
 * usage: escape MODE MARKER [ARGS...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdint.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *marker = "escape";

static void name_self(void) { prctl(PR_SET_NAME, marker, 0, 0, 0); }

static __attribute__((noreturn)) void sleep_forever(void) {
    name_self();
    for (;;) pause();
}

static void *thread_sleep(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

/* The classic daemonize: fork, setsid, fork again, parent and middle exit. */
static int daemonize(void) {
    pid_t p = fork();
    if (p < 0) return 1;
    if (p > 0) { waitpid(p, NULL, 0); return 0; }
    setsid();
    if (fork() != 0) _exit(0);
    sleep_forever();
    return 0;
}

/* A child with an empty environment and its own process group, then a grandchild. */
static int env_and_pgrp(const char *self) {
    pid_t p = fork();
    if (p < 0) return 1;
    if (p == 0) {
        setpgid(0, 0);
        char *argv[] = {(char *)self, "sleep", (char *)marker, NULL};
        char *envp[] = {NULL};
        execve(self, argv, envp);
        _exit(127);
    }
    return 0;
}

static int threads(int n) {
    pthread_t t;
    for (int i = 0; i < n; i++) pthread_create(&t, NULL, thread_sleep, NULL);
    sleep_forever();
    return 0;
}

/* vfork, then exec a sleeper in the child. */
static int do_vfork(const char *self) {
    pid_t p = vfork();
    if (p == 0) {
        execl(self, self, "sleep", marker, (char *)NULL);
        _exit(127);
    }
    return p < 0;
}

/* clone(CLONE_PARENT): the child is our sibling, its parent is our parent. */
static int clone_parent(void) {
    long p = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
    if (p == 0) sleep_forever();
    return p < 0;
}

/* The pid hopper: fork and exit, over and over, so the live pid keeps changing. */
static __attribute__((noreturn)) int hopper(void) {
    name_self();
    for (;;) {
        pid_t p = fork();
        if (p > 0) _exit(0);
        if (p < 0) usleep(100);
    }
}

/* The fork bomb: everyone forks for ever. */
static __attribute__((noreturn)) int forkbomb(void) {
    name_self();
    for (;;) {
        if (fork() < 0) usleep(50);
    }
}

/* A root job leaves its slot's cgroups: move itself into each hierarchy's root cgroup. */
static int leave_cgroups(int argc, char **argv) {
    name_self();
    char pid[32];
    snprintf(pid, sizeof pid, "%d", getpid());
    for (int i = 0; i < argc; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/cgroup.procs", argv[i]);
        int fd = open(path, O_WRONLY);
        if (fd < 0 || write(fd, pid, strlen(pid)) < 0) {
            fprintf(stderr, "escape: cannot move to %s: %s\n", path, strerror(errno));
            return 1;
        }
        close(fd);
    }
    printf("left\n");
    fflush(stdout);
    sleep_forever();
    return 0;
}

/* fork at once, before anything else: the child must be tagged too. */
static int fork_now(void) {
    if (fork() == 0) sleep_forever();
    sleep_forever();
    return 0;
}

/* Burn `secs` seconds of CPU time, then exit. */
static int spin(double secs) {
    name_self();
    struct timespec ts;
    volatile unsigned long x = 0;
    for (;;) {
        for (int i = 0; i < 100000; i++) x++;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        if (ts.tv_sec + ts.tv_nsec / 1e9 >= secs) return 0;
    }
}

/* The same, in a daemon: double fork, new session, then spin. */
static int daemon_spin(double secs) {
    pid_t p = fork();
    if (p < 0) return 1;
    if (p > 0) { waitpid(p, NULL, 0); return 0; }
    setsid();
    if (fork() != 0) _exit(0);
    _exit(spin(secs));
}

/* Touch `mib` MiB of anonymous memory, hold it `ms` milliseconds, free it, exit. */
static int touch(long mib, long ms) {
    name_self();
    size_t len = (size_t)mib << 20;
    /* volatile: the compiler may not drop stores it can see are never read. */
    volatile char *p = malloc(len);
    if (!p) return 1;
    for (size_t i = 0; i < len; i += 4096) p[i] = 1;
    usleep((useconds_t)ms * 1000);
    free((void *)p);
    return 0;
}

/* Try to reach the tracker's maps as an unprivileged user: print one line per attempt. */
static int try_maps(int argc, char **argv) {
    if (argc < 2) return 2;
    uid_t uid = (uid_t)atoi(argv[0]);
    if (setgroups(0, NULL) != 0 && errno != EPERM) perror("setgroups");
    if (setgid(uid) != 0 || setuid(uid) != 0) { perror("setuid"); return 2; }
    for (int i = 1; i < argc; i++) {
        union {
            struct { unsigned long long pathname; unsigned int bpf_fd, file_flags; } obj;
            struct { unsigned int id, next_id, open_flags; } get;
            char pad[128];
        } attr;
        int fd;
        const char *what;
        memset(&attr, 0, sizeof attr);
        if (argv[i][0] == '/') {
            attr.obj.pathname = (unsigned long long)(uintptr_t)argv[i];
            fd = syscall(SYS_bpf, 7 /* BPF_OBJ_GET */, &attr, sizeof attr);
            what = "obj_get";
        } else {
            attr.get.id = (unsigned int)atoi(argv[i]);
            fd = syscall(SYS_bpf, 14 /* BPF_MAP_GET_FD_BY_ID */, &attr, sizeof attr);
            what = "get_fd_by_id";
        }
        if (fd >= 0) printf("%s %s OPENED\n", what, argv[i]);
        else printf("%s %s denied %s\n", what, argv[i], strerror(errno));
    }
    return 0;
}

/* A thread that is not the leader execs a sleeper (`de_thread` gives it the leader's pid and
 * start time), while two other threads sleep: what a Go program's syscall.Exec does. */
static const char *exec_self;

static const char *exec_mode = "sleep";

static void *thread_exec(void *arg) {
    (void)arg;
    execl(exec_self, exec_self, exec_mode, marker, (char *)NULL);
    _exit(127);
}

/* Fork at once, then both sleep: what the exec'd image of `thread-exec-fork` does. */
static int fork_sleep(void) {
    if (fork() < 0) return 1;
    sleep_forever();
    return 0;
}

static int thread_exec_mode(const char *self, const char *then) {
    pthread_t t;
    exec_self = self;
    exec_mode = then;
    for (int i = 0; i < 2; i++) pthread_create(&t, NULL, thread_sleep, NULL);
    pthread_create(&t, NULL, thread_exec, NULL);
    for (;;) pause();
    return 0;
}

/* io_uring without liburing: one ring, its submission and completion queues. */
struct ring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *sq_flags, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    int sqpoll;
};

static int ring_init(struct ring *r, unsigned flags) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags;
    p.sq_thread_idle = 600000; /* ms: the SQPOLL thread stays up */
    r->sqpoll = (flags & IORING_SETUP_SQPOLL) != 0;
    r->fd = (int)syscall(__NR_io_uring_setup, 8, &p);
    if (r->fd < 0) return -errno;
    size_t sqlen = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cqlen = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(NULL, sqlen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                    IORING_OFF_SQ_RING);
    char *cq = mmap(NULL, cqlen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                    IORING_OFF_CQ_RING);
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED) return -errno;
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->sq_flags = (unsigned *)(sq + p.sq_off.flags);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return 0;
}

static void ring_submit(struct ring *r, const struct io_uring_sqe *sqe) {
    unsigned tail = *r->sq_tail, idx = tail & *r->sq_mask;
    r->sqes[idx] = *sqe;
    r->sq_array[idx] = idx;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    unsigned flags = 0;
    if (r->sqpoll && (__atomic_load_n(r->sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_NEED_WAKEUP))
        flags |= IORING_ENTER_SQ_WAKEUP;
    syscall(__NR_io_uring_enter, r->fd, r->sqpoll ? 0 : 1, 0, flags, NULL, 0);
}

/* The result of the next completion, waiting for it. */
static int ring_wait(struct ring *r) {
    unsigned head = *r->cq_head;
    while (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE))
        syscall(__NR_io_uring_enter, r->fd, 0, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    int res = r->cqes[head & *r->cq_mask].res;
    __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

/* io_uring's own threads do the work: an SQPOLL thread opens and reads /dev/zero, an io-wq
 * worker (IOSQE_ASYNC) does it again, and another worker stays blocked reading a pipe. Each
 * result goes to OUT, then "ready". */
static int io_uring_mode(const char *out) {
    name_self();
    FILE *f = fopen(out, "w");
    if (!f) return 1;
    setvbuf(f, NULL, _IOLBF, 0);
    struct ring poll, wq;
    int e1 = ring_init(&poll, IORING_SETUP_SQPOLL), e2 = ring_init(&wq, 0);
    if (e1 < 0 || e2 < 0) {
        fprintf(f, "setup %d %d\n", e1, e2);
        return 1;
    }
    static char buf[4096];
    struct ring *rings[2] = {&poll, &wq};
    const char *names[2] = {"sqpoll", "async"};
    for (int i = 0; i < 2; i++) {
        struct io_uring_sqe sqe;
        memset(&sqe, 0, sizeof sqe);
        sqe.opcode = IORING_OP_OPENAT;
        sqe.fd = AT_FDCWD;
        sqe.addr = (unsigned long)"/dev/zero";
        sqe.open_flags = O_RDONLY;
        sqe.flags = i == 1 ? IOSQE_ASYNC : 0;
        ring_submit(rings[i], &sqe);
        int fd = ring_wait(rings[i]);
        fprintf(f, "%s open %d\n", names[i], fd);
        if (fd >= 0) {
            memset(&sqe, 0, sizeof sqe);
            sqe.opcode = IORING_OP_READ;
            sqe.fd = fd;
            sqe.addr = (unsigned long)buf;
            sqe.len = sizeof buf;
            sqe.flags = i == 1 ? IOSQE_ASYNC : 0;
            ring_submit(rings[i], &sqe);
            fprintf(f, "%s read %d\n", names[i], ring_wait(rings[i]));
        }
    }
    /* A worker that stays: blocked reading an empty pipe. */
    int pfd[2];
    if (pipe(pfd) == 0) {
        struct io_uring_sqe sqe;
        memset(&sqe, 0, sizeof sqe);
        sqe.opcode = IORING_OP_READ;
        sqe.fd = pfd[0];
        sqe.addr = (unsigned long)buf;
        sqe.len = 1;
        sqe.flags = IOSQE_ASYNC;
        ring_submit(&wq, &sqe);
    }
    fprintf(f, "ready\n");
    fclose(f);
    for (;;) pause();
    return 0;
}

/* A chain of N processes, each the child of the one before, all asleep: a deep tree. */
static int chain(int n) {
    name_self();
    for (int i = 1; i < n; i++) {
        pid_t p = fork();
        if (p < 0) return 1;
        if (p > 0) sleep_forever();
    }
    sleep_forever();
    return 0;
}

/* Churn: workers that fork children which start threads touching memory at once, exit, and
 * start again, so tasks enter and leave the slot and its memory moves on every CPU. */
static void *thread_touch(void *arg) {
    (void)arg;
    size_t len = 1 << 20;
    volatile char *p = malloc(len);
    if (p) {
        for (size_t i = 0; i < len; i += 4096) p[i] = 1;
        free((void *)p);
    }
    return NULL;
}

static __attribute__((noreturn)) void churn_worker(void) {
    name_self();
    for (;;) {
        pid_t p = fork();
        if (p == 0) {
            pthread_t t[4];
            for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, thread_touch, NULL);
            thread_touch(NULL);
            for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
            _exit(0);
        }
        if (p > 0) waitpid(p, NULL, 0);
        else usleep(100);
    }
}

static int churn(int workers) {
    for (int i = 0; i < workers; i++)
        if (fork() == 0) churn_worker();
    sleep_forever();
    return 0;
}

/* A child that exits at once, reaped only when a line comes on stdin: until then it has
 * exited and is not freed. */
/* A child that spins SECS of CPU (none: exits at once) and stays a zombie until a line comes
 * on stdin, when it is reaped. */
static int reap_on_input(double secs) {
    pid_t child = fork();
    if (child == 0) _exit(secs > 0 ? spin(secs) : 0);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    return waitpid(child, NULL, 0) == child ? 0 : 1;
}

/* Run ARGV as a child and reap it and every process orphaned below it (a child subreaper),
 * returning once none is left: a job's whole tree is reaped inside the job, whatever the
 * machine's PID 1 does with orphans (a VM's minimal init never reaps them, and a task is
 * freed, its final CPU harvested, only once reaped). */
static int reaper(char **argv) {
    if (!argv[0] || prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) return 2;
    pid_t child = fork();
    if (child < 0) return 2;
    if (child == 0) {
        execvp(argv[0], argv);
        _exit(127);
    }
    int code = 0, status;
    for (;;) {
        pid_t pid = wait(&status);
        if (pid < 0) {
            if (errno == EINTR) continue;
            return code; /* ECHILD: the whole tree is reaped */
        }
        if (pid == child) code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: escape MODE MARKER [ARGS...]\n");
        return 2;
    }
    const char *mode = argv[1];
    marker = argv[2];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(mode, "reaper")) return reaper(argv + 3);
    if (!strcmp(mode, "reap-on-input")) return reap_on_input(argc > 3 ? atof(argv[3]) : 0);
    if (!strcmp(mode, "sleep")) sleep_forever();
    if (!strcmp(mode, "daemonize")) return daemonize();
    if (!strcmp(mode, "env-pgrp")) return env_and_pgrp(argv[0]);
    if (!strcmp(mode, "threads")) return threads(argc > 3 ? atoi(argv[3]) : 4);
    if (!strcmp(mode, "vfork")) return do_vfork(argv[0]);
    if (!strcmp(mode, "clone-parent")) return clone_parent();
    if (!strcmp(mode, "hopper")) return hopper();
    if (!strcmp(mode, "forkbomb")) return forkbomb();
    if (!strcmp(mode, "leave-cgroups")) return leave_cgroups(argc - 3, argv + 3);
    if (!strcmp(mode, "fork-now")) return fork_now();
    if (!strcmp(mode, "try-maps")) return try_maps(argc - 3, argv + 3);
    if (!strcmp(mode, "spin")) return spin(argc > 3 ? atof(argv[3]) : 1.0);
    if (!strcmp(mode, "daemon-spin")) return daemon_spin(argc > 3 ? atof(argv[3]) : 1.0);
    if (!strcmp(mode, "thread-exec")) return thread_exec_mode(argv[0], "sleep");
    if (!strcmp(mode, "thread-exec-fork")) return thread_exec_mode(argv[0], "fork-sleep");
    if (!strcmp(mode, "fork-sleep")) return fork_sleep();
    if (!strcmp(mode, "io-uring")) return argc > 3 ? io_uring_mode(argv[3]) : 2;
    if (!strcmp(mode, "chain")) return chain(argc > 3 ? atoi(argv[3]) : 2);
    if (!strcmp(mode, "churn")) return churn(argc > 3 ? atoi(argv[3]) : 2);
    if (!strcmp(mode, "touch")) return touch(argc > 3 ? atol(argv[3]) : 1, argc > 4 ? atol(argv[4]) : 0);
    fprintf(stderr, "escape: unknown mode %s\n", mode);
    return 2;
}
