/*
 * The bench's worker (tests/src/bin/bench.rs), in C and linked statically, as the issue's
 * measurements were: a small process whose fork copies little, so that what the tracker adds
 * to a fork is measured against the cost of a fork, not of a large process's page tables.
 *
 * usage: worker CPU. Pinned to CPU; for each "OP N" line on stdin (fork: fork+exit+wait,
 * exec: fork+exec(/bin/true)+wait, pipe: a round trip over two pipes with a child on the same
 * CPU, two context switches, fault: a first touch of an anonymous page), does N of them and
 * prints the nanoseconds per operation.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static void fork_loop(long n, int exec)
{
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			if (exec) {
				char *argv[] = { "/bin/true", NULL };
				execv(argv[0], argv);
			}
			_exit(0);
		}
		waitpid(pid, NULL, 0);
	}
}

/* n round trips of one byte with a child on this CPU (it inherits the pinning). */
static void ping_pong(long n)
{
	int to[2], from[2];
	char b = 0;
	if (pipe(to) || pipe(from))
		exit(1);
	pid_t pid = fork();
	if (pid == 0) {
		close(to[1]);
		close(from[0]);
		while (read(to[0], &b, 1) == 1)
			if (write(from[1], &b, 1) != 1)
				break;
		_exit(0);
	}
	close(to[0]);
	close(from[1]);
	for (long i = 0; i < n; i++)
		if (write(to[1], &b, 1) != 1 || read(from[0], &b, 1) != 1)
			exit(1);
	close(to[1]);
	waitpid(pid, NULL, 0);
	close(from[0]);
}

/* n page faults: the first touch of each page of a fresh anonymous mapping. */
static void touch_pages(long n)
{
	size_t len = (size_t)n * 4096;
	char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		exit(1);
	for (long i = 0; i < n; i++)
		((volatile char *)m)[i * 4096] = 1;
	munmap(m, len);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: worker CPU\n");
		return 2;
	}
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(atoi(argv[1]), &set);
	if (sched_setaffinity(0, sizeof(set), &set)) {
		perror("worker: sched_setaffinity");
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	char op[16];
	long n;
	while (scanf("%15s %ld", op, &n) == 2) {
		double t0 = now_ns();
		if (!strcmp(op, "pipe"))
			ping_pong(n);
		else if (!strcmp(op, "fault"))
			touch_pages(n);
		else
			fork_loop(n, !strcmp(op, "exec"));
		printf("%f\n", (now_ns() - t0) / n);
	}
	return 0;
}
