// A malloc counter for benchmarks and the allocation regression check (`courier bench
// --allocations`): linked into the courier executable, whose definitions of malloc and its
// relatives take precedence over glibc's for the whole process (the executable comes first in
// symbol lookup), so Swift's runtime, Foundation and the C clients are counted too.
//
// Each thread counts in its own cache line (no contended atomics on the allocation path);
// reading sums the slots. Every call forwards to glibc's own entry points (__libc_malloc …),
// so the allocator itself is unchanged.
#include "allocation_counter.h"

#if defined(__linux__) && defined(__GLIBC__)
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

#define SLOTS 256

struct slot {
    _Atomic uint64_t allocations;
    _Atomic uint64_t bytes;
    char padding[64 - 2 * sizeof(uint64_t)];
};

static struct slot slots[SLOTS];
static _Atomic uint32_t nextSlot;
static _Thread_local struct slot *mine;

static inline void count(size_t size) {
    struct slot *slot = mine;
    if (slot == NULL) {
        slot = &slots[atomic_fetch_add_explicit(&nextSlot, 1, memory_order_relaxed) % SLOTS];
        mine = slot;
    }
    // Relaxed and, but for threads beyond SLOTS sharing a slot, uncontended.
    atomic_fetch_add_explicit(&slot->allocations, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&slot->bytes, size, memory_order_relaxed);
}

void *malloc(size_t size) {
    count(size);
    return __libc_malloc(size);
}

void *calloc(size_t count_, size_t size) {
    count(count_ * size);
    return __libc_calloc(count_, size);
}

void *realloc(void *pointer, size_t size) {
    count(size);
    return __libc_realloc(pointer, size);
}

int posix_memalign(void **result, size_t alignment, size_t size) {
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return EINVAL;
    count(size);
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL) return ENOMEM;
    *result = pointer;
    return 0;
}

void *aligned_alloc(size_t alignment, size_t size) {
    count(size);
    return __libc_memalign(alignment, size);
}

void *memalign(size_t alignment, size_t size) {
    count(size);
    return __libc_memalign(alignment, size);
}

bool courier_allocation_counter_available(void) { return true; }

uint64_t courier_allocation_count(void) {
    uint64_t total = 0;
    for (int index = 0; index < SLOTS; index++) total += atomic_load_explicit(&slots[index].allocations, memory_order_relaxed);
    return total;
}

uint64_t courier_allocated_bytes(void) {
    uint64_t total = 0;
    for (int index = 0; index < SLOTS; index++) total += atomic_load_explicit(&slots[index].bytes, memory_order_relaxed);
    return total;
}

#else

bool courier_allocation_counter_available(void) { return false; }
uint64_t courier_allocation_count(void) { return 0; }
uint64_t courier_allocated_bytes(void) { return 0; }

#endif
