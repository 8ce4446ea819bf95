/* floor: the least a parallel runner can do.
 *
 *   floor [-n] N P PROG [ARG...]
 *
 * Runs "PROG ARG... I" for I = 1..N with posix_spawn (with -n: "PROG ARG..."
 * with nothing appended), keeping at most P
 * children in flight, and reaps them with waitpid. No input parsing, no
 * output handling, no jobserver: the CPU it uses per job is the cost of
 * spawning and reaping a process, which every runner pays. The benchmark
 * subtracts it to show what a runner adds on top.
 *
 * Exit status: 0 if every child exited 0, else 1.
 */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

int main(int argc, char **argv)
{
    int append = 1;
    if (argc > 1 && strcmp(argv[1], "-n") == 0) {
        append = 0;
        argv++;
        argc--;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: floor [-n] N P PROG [ARG...]\n");
        return 2;
    }
    long n = strtol(argv[1], NULL, 10);
    long p = strtol(argv[2], NULL, 10);
    if (n < 0 || p < 1) {
        fprintf(stderr, "floor: bad N or P\n");
        return 2;
    }
    int nargs = argc - 3;
    char **cargv = calloc((size_t)nargs + 2, sizeof *cargv);
    if (!cargv)
        return 2;
    memcpy(cargv, argv + 3, (size_t)nargs * sizeof *cargv);
    char value[32];
    cargv[nargs] = append ? value : NULL;
    cargv[nargs + 1] = NULL;

    int failed = 0;
    long running = 0;
    for (long i = 1; i <= n || running > 0;) {
        if (i <= n && running < p) {
            pid_t pid;
            snprintf(value, sizeof value, "%ld", i);
            int rc = posix_spawn(&pid, cargv[0], NULL, NULL, cargv, environ);
            if (rc != 0) {
                fprintf(stderr, "floor: posix_spawn %s: %s\n", cargv[0], strerror(rc));
                return 1;
            }
            running++;
            i++;
            continue;
        }
        int status;
        if (waitpid(-1, &status, 0) < 0) {
            perror("floor: waitpid");
            return 1;
        }
        running--;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed = 1;
    }
    return failed;
}
