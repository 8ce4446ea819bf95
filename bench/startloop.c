/* startloop: start-up cost of several builds of one program, side by side.
 *
 *   startloop ROUNDS N LABEL=PROG [LABEL=PROG...] [-- ARG...]
 *
 * In each of ROUNDS rounds, runs every PROG N times one after the other
 * ("PROG ARG..." with posix_spawn, stdin/stdout as inherited, waitpid), the
 * order of the PROGs rotated by one each round so that none always runs first.
 * Prints one line per round and PROG: "round LABEL wall_us cpu_us", the mean
 * wall time per run (CLOCK_MONOTONIC around the N runs) and the mean CPU
 * (user + sys of the children, getrusage(RUSAGE_CHILDREN) delta).
 * bench/startup-profiles turns these lines into medians and ratios.
 *
 * Exit status: 0 if every run exited 0, else 1 (at the first failure).
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static double children_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: startloop ROUNDS N LABEL=PROG [LABEL=PROG...] [-- ARG...]\n");
        return 2;
    }
    long rounds = strtol(argv[1], NULL, 10);
    long n = strtol(argv[2], NULL, 10);
    if (rounds < 1 || n < 1) {
        fprintf(stderr, "startloop: bad ROUNDS or N\n");
        return 2;
    }
    int nprogs = 0;
    int first_arg = argc;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            first_arg = i + 1;
            break;
        }
        nprogs++;
    }
    if (nprogs < 1) {
        fprintf(stderr, "startloop: no LABEL=PROG\n");
        return 2;
    }
    int nargs = first_arg < argc ? argc - first_arg : 0;
    char **labels = calloc((size_t)nprogs, sizeof *labels);
    char **progs = calloc((size_t)nprogs, sizeof *progs);
    char **cargv = calloc((size_t)nargs + 2, sizeof *cargv);
    if (!labels || !progs || !cargv)
        return 2;
    for (int i = 0; i < nprogs; i++) {
        char *spec = argv[3 + i];
        char *eq = strchr(spec, '=');
        if (!eq) {
            fprintf(stderr, "startloop: %s: not LABEL=PROG\n", spec);
            return 2;
        }
        *eq = '\0';
        labels[i] = spec;
        progs[i] = eq + 1;
    }
    for (int i = 0; i < nargs; i++)
        cargv[1 + i] = argv[first_arg + i];

    for (long r = 0; r < rounds; r++) {
        for (int k = 0; k < nprogs; k++) {
            int p = (int)((k + r) % nprogs);
            cargv[0] = progs[p];
            double cpu0 = children_cpu_us();
            double t0 = now_us();
            for (long i = 0; i < n; i++) {
                pid_t pid;
                int rc = posix_spawn(&pid, progs[p], NULL, NULL, cargv, environ);
                if (rc != 0) {
                    fprintf(stderr, "startloop: posix_spawn %s: %s\n", progs[p], strerror(rc));
                    return 1;
                }
                int status;
                if (waitpid(pid, &status, 0) < 0) {
                    perror("startloop: waitpid");
                    return 1;
                }
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    fprintf(stderr, "startloop: %s: exit status %d\n", progs[p], status);
                    return 1;
                }
            }
            double t1 = now_us();
            double cpu1 = children_cpu_us();
            printf("%ld %s %.2f %.2f\n", r, labels[p], (t1 - t0) / n, (cpu1 - cpu0) / n);
            fflush(stdout);
        }
    }
    return 0;
}
