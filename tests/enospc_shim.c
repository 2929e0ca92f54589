/* A full disk without privileges: loaded with LD_PRELOAD, this makes every write into files under
 * $ENOSPC_DIR fail with ENOSPC once $ENOSPC_AFTER bytes have been written there by the process
 * (Python's own writes and TensorStore's alike, as both call libc's write family). Files opened
 * elsewhere are untouched. tests/test_faults.py compiles it with the system's cc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 65536
static atomic_char tracked[MAX_FD];
static atomic_llong written;

static const char *prefix(void) { return getenv("ENOSPC_DIR"); }

static long long limit(void) {
  const char *text = getenv("ENOSPC_AFTER");
  return text ? atoll(text) : 0;
}

static int under_prefix(int dirfd, const char *path) {
  const char *p = prefix();
  if (!p || !path) return 0;
  if (path[0] == '/') return strncmp(path, p, strlen(p)) == 0;
  char base[4096];
  if (dirfd == AT_FDCWD) {
    if (!getcwd(base, sizeof base)) return 0;
  } else {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
    ssize_t n = readlink(link, base, sizeof base - 1);
    if (n < 0) return 0;
    base[n] = 0;
  }
  return strncmp(base, p, strlen(p)) == 0;
}

static void track(int fd, int dirfd, const char *path) {
  if (fd >= 0 && fd < MAX_FD) atomic_store(&tracked[fd], (char)under_prefix(dirfd, path));
}

/* Whether `n` more bytes to `fd` may be written; sets errno to ENOSPC when not. */
static int allowed(int fd, size_t n) {
  if (fd < 0 || fd >= MAX_FD || !atomic_load(&tracked[fd]) || n == 0) return 1;
  if (atomic_fetch_add(&written, (long long)n) + (long long)n > limit()) {
    errno = ENOSPC;
    return 0;
  }
  return 1;
}

#define REAL(name, ret, args) static ret (*real_##name) args; \
  if (!real_##name) real_##name = (ret (*) args)dlsym(RTLD_NEXT, #name)

static mode_t mode_arg(int flags, va_list ap) {
  return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
  REAL(open, int, (const char *, int, ...));
  va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
  int fd = real_open(path, flags, mode);
  track(fd, AT_FDCWD, path);
  return fd;
}

int open64(const char *path, int flags, ...) {
  REAL(open64, int, (const char *, int, ...));
  va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
  int fd = real_open64(path, flags, mode);
  track(fd, AT_FDCWD, path);
  return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
  REAL(openat, int, (int, const char *, int, ...));
  va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
  int fd = real_openat(dirfd, path, flags, mode);
  track(fd, dirfd, path);
  return fd;
}

int openat64(int dirfd, const char *path, int flags, ...) {
  REAL(openat64, int, (int, const char *, int, ...));
  va_list ap; va_start(ap, flags); mode_t mode = mode_arg(flags, ap); va_end(ap);
  int fd = real_openat64(dirfd, path, flags, mode);
  track(fd, dirfd, path);
  return fd;
}

ssize_t write(int fd, const void *buf, size_t n) {
  REAL(write, ssize_t, (int, const void *, size_t));
  return allowed(fd, n) ? real_write(fd, buf, n) : -1;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t offset) {
  REAL(pwrite, ssize_t, (int, const void *, size_t, off_t));
  return allowed(fd, n) ? real_pwrite(fd, buf, n, offset) : -1;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t offset) {
  REAL(pwrite64, ssize_t, (int, const void *, size_t, off64_t));
  return allowed(fd, n) ? real_pwrite64(fd, buf, n, offset) : -1;
}

static size_t total(const struct iovec *iov, int count) {
  size_t n = 0;
  for (int i = 0; i < count; i++) n += iov[i].iov_len;
  return n;
}

ssize_t writev(int fd, const struct iovec *iov, int count) {
  REAL(writev, ssize_t, (int, const struct iovec *, int));
  return allowed(fd, total(iov, count)) ? real_writev(fd, iov, count) : -1;
}

ssize_t pwritev(int fd, const struct iovec *iov, int count, off_t offset) {
  REAL(pwritev, ssize_t, (int, const struct iovec *, int, off_t));
  return allowed(fd, total(iov, count)) ? real_pwritev(fd, iov, count, offset) : -1;
}

int fallocate(int fd, int mode, off_t offset, off_t len) {
  REAL(fallocate, int, (int, int, off_t, off_t));
  return allowed(fd, (size_t)len) ? real_fallocate(fd, mode, offset, len) : -1;
}
