/*
 * The attacker: what an unprivileged local user, or a job running as root in a slot, tries
 * against the node. Built by tests/build.rs; the security tests run it as other users and
 * inside slots. Each probe prints one line, "NAME ok" or "NAME denied ERRNO-NAME".
 *
 * usage:
 *   attacker hold N TARGET...   open N connections round-robin over TARGETs (host:port or a
 *                               socket path), non-blocking; print "opened O refused R", then
 *                               hold them until stdin closes
 *   attacker get PATH TARGET    GET TARGET over HTTP/1.0 on the Unix socket PATH; print the
 *                               status line, or "connect denied ERRNO-NAME"
 *   attacker root-escapes PIN UNLINK OUTSIDE_PID
 *                               every way a root job might untrack itself: open the pin PIN,
 *                               unlink UNLINK (the pin, or a harmless path), load BPF, mount
 *                               bpffs, load modules, trace or enter OUTSIDE_PID
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    if (rc >= 0) printf("%s ok\n", name);
    else printf("%s denied %s\n", name, strerrorname_np(errno) ? strerrorname_np(errno) : "?");
}

static int connect_to(const char *target, int nonblock) {
    int fd;
    if (target[0] == '/') {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path, target, sizeof a.sun_path - 1);
        fd = socket(AF_UNIX, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
        if (fd < 0) return -1;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS &&
            errno != EAGAIN) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        return fd;
    }
    char host[64];
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof host) return errno = EINVAL, -1;
    memcpy(host, target, colon - target);
    host[colon - target] = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
    inet_pton(AF_INET, host, &a.sin_addr);
    fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int hold(int n, int ntargets, char **targets) {
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
    int opened = 0, refused = 0;
    for (int i = 0; i < n; i++) {
        if (connect_to(targets[i % ntargets], 1) >= 0) opened++;
        else refused++;
    }
    printf("opened %d refused %d\n", opened, refused);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    return 0;
}

static int get(const char *path, const char *target) {
    int fd = connect_to(path, 0);
    if (fd < 0) {
        printf("connect denied %s\n", strerrorname_np(errno));
        return 0;
    }
    dprintf(fd, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", target);
    char buf[256] = {0};
    ssize_t got = read(fd, buf, sizeof buf - 1);
    if (got <= 0) {
        printf("read failed\n");
        return 0;
    }
    char *eol = strstr(buf, "\r\n");
    if (eol) *eol = 0;
    printf("%s\n", buf);
    return 0;
}

/* bpf(2) attributes, as much as the probes use. */
union bpf_attr_min {
    struct { uint64_t pathname; uint32_t bpf_fd, file_flags; } obj;
    struct {
        uint32_t prog_type, insn_cnt;
        uint64_t insns, license;
        uint32_t log_level, log_size;
        uint64_t log_buf;
    } load;
    char pad[128];
};

/* A system call through the i386 ABI (int 0x80), in a child: a kernel without IA32
 * emulation answers it with a signal. */
static void i386_bpf(void) {
    pid_t pid = fork();
    if (pid == 0) {
        long rc;
        __asm__ volatile("int $0x80" : "=a"(rc) : "a"(357L), "b"(0L), "c"(0L), "d"(0L) : "memory");
        if (rc < 0) {
            errno = (int)-rc;
            report("i386_bpf", -1);
        } else {
            report("i386_bpf", rc);
        }
        fflush(stdout);
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) printf("i386_bpf no-ia32 signal %d\n", WTERMSIG(status));
}

static int root_escapes(const char *pin, const char *victim, pid_t outside) {
    union bpf_attr_min attr;
    memset(&attr, 0, sizeof attr);
    attr.obj.pathname = (uint64_t)(uintptr_t)pin;
    report("obj_get", syscall(SYS_bpf, 7 /* BPF_OBJ_GET */, &attr, sizeof attr));

    /* r0 = 0; exit: the smallest program there is. */
    static const uint64_t insns[2] = {0x00000000000000b7ULL, 0x0000000000000095ULL};
    memset(&attr, 0, sizeof attr);
    attr.load.prog_type = 1; /* BPF_PROG_TYPE_SOCKET_FILTER */
    attr.load.insn_cnt = 2;
    attr.load.insns = (uint64_t)(uintptr_t)insns;
    attr.load.license = (uint64_t)(uintptr_t)"GPL";
    report("prog_load", syscall(SYS_bpf, 5 /* BPF_PROG_LOAD */, &attr, sizeof attr));

    report("unlink_pin", unlink(victim));

    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/attacker-bpffs-%d", getpid());
    mkdir(dir, 0700);
    long rc = mount("bpf", dir, "bpf", 0, NULL);
    report("mount_bpffs", rc);
    if (rc == 0) umount2(dir, MNT_DETACH);
    rmdir(dir);
    rc = syscall(SYS_fsopen, "bpf", 0);
    report("fsopen_bpffs", rc);
    if (rc >= 0) close((int)rc);
    report("open_tree", syscall(SYS_open_tree, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */));
    /* x32's mount: the x86-64 number with bit 30 set. */
    report("x32_mount", syscall(165 | 0x40000000, "none", dir, "bpf", 0, NULL));
    i386_bpf();

    report("finit_module", syscall(SYS_finit_module, -1, "", 0));
    report("delete_module", syscall(SYS_delete_module, "no_such_module_xyz", O_NONBLOCK));
    report("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0));

    rc = ptrace(PTRACE_SEIZE, outside, 0, 0);
    report("ptrace_outside", rc);
    if (rc == 0) ptrace(PTRACE_DETACH, outside, 0, 0);
    char root[64];
    snprintf(root, sizeof root, "/proc/%d/root/", outside);
    rc = open(root, O_RDONLY | O_DIRECTORY);
    report("proc_root_outside", rc);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 4 && !strcmp(argv[1], "hold")) return hold(atoi(argv[2]), argc - 3, argv + 3);
    if (argc == 4 && !strcmp(argv[1], "get")) return get(argv[2], argv[3]);
    if (argc == 5 && !strcmp(argv[1], "root-escapes"))
        return root_escapes(argv[2], argv[3], atoi(argv[4]));
    fprintf(stderr,
            "usage: attacker hold N TARGET... | get PATH TARGET | root-escapes PIN UNLINK PID\n");
    return 2;
}
