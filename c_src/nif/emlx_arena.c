/* The arena: a list of blocks from malloc. */
#include "emlx_arena.h"

#include <stdlib.h>

struct emlx_arena_block {
  emlx_arena_block *next;
  max_align_t data[];
};

void *emlx_arena_alloc(emlx_arena *arena, size_t bytes) {
  emlx_arena_block *b = malloc(sizeof(emlx_arena_block) + bytes + sizeof(max_align_t));
  if (!b) return NULL;
  b->next = arena->blocks;
  arena->blocks = b;
  return b->data;
}

void emlx_arena_free(emlx_arena *arena) {
  while (arena->blocks) {
    emlx_arena_block *next = arena->blocks->next;
    free(arena->blocks);
    arena->blocks = next;
  }
}
