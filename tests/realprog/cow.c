/* fork with copy-on-write of a big working set, several rounds: parent and
 * child both write to the shared pages (overlapping sets, in turns ordered by
 * pipes so both are alive and writing), and each then checks that it sees its
 * own writes and the pre-fork data, never the other's. In odd rounds the
 * child forks a grandchild that does the same against the child. The child's
 * verdict comes back as its exit status. Argument: working set in MiB
 * (default 16); rounds are fixed (4). */
#include <sys/mman.h>
#include <sys/wait.h>
#include "rp.h"

static uint32_t *ws;
static size_t npages;
static uint8_t *tag;  /* per page: which writer's value it holds (0: the initial data) */
enum { WPP = PAGE / 4, ROUNDS = 4 };

static inline uint32_t val(size_t page, size_t word, uint32_t t) {
  return (uint32_t)(page * WPP + word) * 2654435761u ^ t * 0x01000193u;
}
/* Rewrites, in full, the pages selected by (page + r) % mod == 0 with tag t. */
static void write_pages(int r, int mod, uint8_t t) {
  for (size_t p = 0; p < npages; p++) {
    if ((p + r) % mod) continue;
    uint32_t *w = ws + p * WPP;
    for (size_t j = 0; j < WPP; j++) w[j] = val(p, j, t);
    tag[p] = t;
  }
}
/* Number of pages with a word that disagrees with the page's tag. */
static size_t bad_pages(void) {
  size_t bad = 0;
  for (size_t p = 0; p < npages; p++) {
    const uint32_t *w = ws + p * WPP;
    for (size_t j = 0; j < WPP; j++)
      if (w[j] != val(p, j, tag[p])) { bad++; break; }
  }
  return bad;
}

static void xwrite(int fd, char c) { if (write(fd, &c, 1) != 1) _exit(9); }
static char xread(int fd) { char c = 0; if (read(fd, &c, 1) != 1) _exit(9); return c; }

/* One parent/child exchange in the current process: forks, both write in
 * turns, both check. Returns the number of failures seen (the child's come
 * back through its exit status). t_parent/t_child are the tags they write. */
static int exchange(int r, uint8_t t_parent, uint8_t t_child, int nested) {
  int to_child[2], to_parent[2];
  if (pipe(to_child) || pipe(to_parent)) { rp_fail("pipe failed"); return 1; }
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) { rp_fail("fork failed"); return 1; }
  if (pid == 0) {
    close(to_child[1]); close(to_parent[0]);
    xread(to_child[0]);                 /* the parent has written its first half */
    write_pages(r, 3, t_child);         /* overlaps the parent's (p + r) % 2 pages */
    xwrite(to_parent[1], 'c');
    xread(to_child[0]);                 /* the parent has written its second half */
    int fails = 0;
    if (nested) fails += exchange(r + 1, t_child + 10, t_child + 20, 0);
    size_t bad = bad_pages();
    if (bad) { printf("FAIL cow: round %d: child sees %zu wrong pages\n", r, bad); fails++; }
    fflush(stdout);
    _exit(fails > 100 ? 100 : fails);
  }
  close(to_child[0]); close(to_parent[1]);
  write_pages(r, 2, t_parent);
  xwrite(to_child[1], 'p');
  xread(to_parent[0]);                  /* the child has written */
  write_pages(r + 1, 5, t_parent);      /* more pages, after the child's writes */
  xwrite(to_child[1], 'p');
  int st = 0, fails = 0;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) {
    printf("FAIL cow: round %d: child did not exit normally (status %#x)\n", r, st);
    fails++;
  } else {
    fails += WEXITSTATUS(st);
  }
  size_t bad = bad_pages();
  if (bad) { printf("FAIL cow: round %d: parent sees %zu wrong pages\n", r, bad); fails++; }
  close(to_child[1]); close(to_parent[0]);
  return fails;
}

int main(int argc, char **argv) {
  rp_start("cow");
  long mib = rp_arg(argc, argv, 16);
  npages = mib * 256;
  ws = mmap(0, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  tag = calloc(npages, 1);
  if (ws == MAP_FAILED || !tag) { printf("FAIL cow: no memory\n"); return 1; }
  for (size_t p = 0; p < npages; p++)
    for (size_t j = 0; j < WPP; j++) ws[p * WPP + j] = val(p, j, 0);
  for (int r = 0; r < ROUNDS; r++) {
    int f = exchange(r, 1 + 2 * r, 2 + 2 * r, r % 2);
    rp_fails += f;
    printf("round %d: %s\n", r, f ? "mismatch" : "each saw only its own writes");
  }
  printf("hash %08x\n", rp_hash(ws, npages * WPP));
  return rp_end();
}
