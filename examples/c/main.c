/* Greedy generation through the flint C ABI: main MODEL N_NEW ID... prints the new ids. */
#include <stdio.h>
#include <stdlib.h>
#include "flint.h"

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s MODEL N_NEW ID...\n", argv[0]);
    return 2;
  }
  FlintConfig cfg = {"cpu", 16, 4, 4, 8};
  FlintEngine *e = flint_engine_create(argv[1], &cfg);
  if (!e) {
    fprintf(stderr, "create: %s\n", flint_last_error());
    return 1;
  }
  size_t n = (size_t)(argc - 3);
  uint32_t *prompt = malloc(n * sizeof *prompt);
  for (size_t i = 0; i < n; i++) prompt[i] = (uint32_t)strtoul(argv[3 + i], NULL, 10);
  if (flint_add_request(e, NULL, 0, NULL, 1, true) != -1) return 1; /* empty prompt: error */
  int64_t id = flint_add_request(e, prompt, n, NULL, strtoul(argv[2], NULL, 10), true);
  if (id < 0) {
    fprintf(stderr, "add: %s\n", flint_last_error());
    return 1;
  }
  while (flint_has_unfinished(e) == 1) {
    size_t nf = 0;
    int64_t nt = flint_step(e, &nf);
    if (nt < 0) {
      fprintf(stderr, "step: %s\n", flint_last_error());
      return 1;
    }
    for (int64_t i = 0; i < nt; i++) {
      uint64_t rid;
      uint32_t tok;
      flint_step_token(e, (size_t)i, &rid, &tok);
      printf("%u ", tok);
    }
    for (size_t i = 0; i < nf; i++) {
      uint64_t rid;
      const char *err;
      printf("finish=%s\n", flint_step_finished(e, i, &rid, &err));
    }
  }
  free(prompt);
  flint_engine_destroy(e);
  return 0;
}
