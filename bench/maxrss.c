/* maxrss: peak RSS of one process, read with wait4 on it directly.
 *
 *   maxrss OUT PROG [ARG...]
 *
 * Forks, execs PROG, waits for it with wait4 and writes
 * "ru_maxrss_kib user_us sys_us" to the file OUT; exits with PROG's status
 * (128+N if killed by signal N).
 *
 * Why not wait4 from the benchmark runner itself: ru_maxrss also keeps the
 * high-water mark of the memory a process had before its execve, and a child
 * of a Python process starts with the interpreter's memory (~18 MiB). This
 * helper is small and linked statically, so what it hands over is a few
 * hundred KiB at most. ru_maxrss also covers the waited-for children of PROG:
 * the result is the larger of PROG's own peak and its largest child's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fputs("usage: maxrss OUT PROG [ARG...]\n", stderr);
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("maxrss: fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror("maxrss: exec");
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("maxrss: wait4");
        return 2;
    }
    FILE *out = fopen(argv[1], "w");
    if (!out) {
        perror("maxrss: open OUT");
        return 2;
    }
    fprintf(out, "%ld %ld %ld\n", ru.ru_maxrss,
            (long)(ru.ru_utime.tv_sec * 1000000L + ru.ru_utime.tv_usec),
            (long)(ru.ru_stime.tv_sec * 1000000L + ru.ru_stime.tv_usec));
    fclose(out);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
