/* An arena: memory handed out in blocks and freed all at once. A job keeps
 * the lists it decodes in one, and a program the argument lists of its
 * instructions. */
#ifndef EMLX_ARENA_H
#define EMLX_ARENA_H

#include <stddef.h>

typedef struct emlx_arena_block emlx_arena_block;

/* All zeros is an empty arena. */
typedef struct {
  emlx_arena_block *blocks;
} emlx_arena;

/* bytes of memory aligned for any type, or NULL when out of memory. */
void *emlx_arena_alloc(emlx_arena *arena, size_t bytes);
/* Frees every block; the arena is empty again. */
void emlx_arena_free(emlx_arena *arena);

#endif
