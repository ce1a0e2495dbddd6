/* Growable arrays: capacity doubles, so appending stays amortised O(1). Inline because tokenizer
 * encoding reserves room for every id it appends. */
#ifndef PUNIE_UTIL_GROW_H
#define PUNIE_UTIL_GROW_H

#include <stdint.h>
#include <stdlib.h>

/* Returns the array p (capacity *cap elements of elem bytes) with room for at least need elements,
 * reallocated with the capacity doubled from first as often as needed and *cap updated. NULL when out
 * of memory or the size would overflow; p and *cap are then unchanged. */
static inline void *grow_array(void *p, size_t *cap, size_t need, size_t elem, size_t first)
{
    if (p && need <= *cap)
        return p;
    size_t nc = *cap ? *cap : first;
    while (nc < need) {
        if (nc > SIZE_MAX / 2)
            return NULL;
        nc *= 2;
    }
    if (nc > SIZE_MAX / elem)
        return NULL;
    void *np = realloc(p, nc * elem);
    if (np)
        *cap = nc;
    return np;
}

#endif
