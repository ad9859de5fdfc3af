#ifndef COURIER_ALLOCATION_COUNTER_H
#define COURIER_ALLOCATION_COUNTER_H

#include <stdbool.h>
#include <stdint.h>

/// Whether this platform's allocator is interposed (glibc only); elsewhere the counts stay 0.
bool courier_allocation_counter_available(void);

/// Allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign) made by
/// every thread of the process since it started. Frees are not counted.
uint64_t courier_allocation_count(void);

/// Bytes requested by those allocations.
uint64_t courier_allocated_bytes(void);

#endif
