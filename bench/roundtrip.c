/* Token round trips on a jobserver, for bench/accounting.
 *
 *   roundtrip PATH N
 *
 * Opens PATH (a fifo or an accounting pool's token file) read-write, blocking,
 * as make opens a fifo jobserver; takes one token and gives it back (a read of
 * one byte, a write of that byte) 200 times to warm up, then N times on the
 * clock (CLOCK_MONOTONIC). Prints the microseconds per round trip. Any read or
 * write that does not move exactly one byte ends it with status 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void round_trip(int fd, const char *path) {
    char token;
    ssize_t n;
    do {
        n = read(fd, &token, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) {
        fprintf(stderr, "roundtrip: read %s: %zd (%s)\n", path, n, n < 0 ? strerror(errno) : "end");
        exit(1);
    }
    do {
        n = write(fd, &token, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) {
        fprintf(stderr, "roundtrip: write %s: %zd (%s)\n", path, n, n < 0 ? strerror(errno) : "short");
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: roundtrip PATH N\n");
        return 2;
    }
    const char *path = argv[1];
    long rounds = strtol(argv[2], NULL, 10);
    if (rounds <= 0) {
        fprintf(stderr, "roundtrip: N must be a positive number, not %s\n", argv[2]);
        return 2;
    }
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "roundtrip: open %s: %s\n", path, strerror(errno));
        return 1;
    }
    for (int i = 0; i < 200; i++)
        round_trip(fd, path);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < rounds; i++)
        round_trip(fd, path);
    clock_gettime(CLOCK_MONOTONIC, &end);
    double us = (end.tv_sec - start.tv_sec) * 1e6 + (end.tv_nsec - start.tv_nsec) / 1e3;
    printf("%.3f\n", us / rounds);
    close(fd);
    return 0;
}
