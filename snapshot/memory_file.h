/* Guest RAM in a snapshot: `memory` holds raw RAM at its own offsets (sparse: pages not
 * saved are holes) and `memory.extents` lists which pages the file holds. A base
 * snapshot saves every page the guest ever touched; a layer over a restored VM saves
 * only the pages that became private (anonymous) since the restore, i.e. those the
 * guest, KVM or our devices wrote. Restore maps the base file MAP_PRIVATE and each
 * layer's extents over it, so children share every page none of them wrote. */
#ifndef MITOS_MEMORY_FILE_H
#define MITOS_MEMORY_FILE_H

#include <stdint.h>

#include "lib/error.h"
#include "lib/guest_mem.h"

#define MEMORY_FILE_NAME     "memory"
#define MEMORY_EXTENTS_NAME  "memory.extents"
#define MEMORY_EXTENTS_MAGIC "MITOSMX1"
#define MEMORY_EXTENTS_VERSION 1
#define MEMORY_PAGE 4096ULL
/* Each extent of a layer becomes a mapping; stay well below vm.max_map_count. */
#define MEMORY_MAX_EXTENTS 32768

struct mem_extent {
	uint64_t first_page;
	uint64_t npages;
};

struct mem_extents {
	uint64_t mem_size;
	uint64_t n;
	struct mem_extent *e;
};

/* Pages of `m` to save: every touched page (whole_vm) or only private ones (layer).
 * Reads /proc/self/pagemap; extents come back sorted and coalesced. */
int memory_dirty_extents(const struct guest_mem *m, struct mem_extents *x, struct mitos_err *e);

/* Writes `memory` and `memory.extents` into dir. */
int memory_file_write(const char *dir, const struct guest_mem *m, const struct mem_extents *x,
		      struct mitos_err *e);

int memory_extents_read(const char *path, struct mem_extents *x, struct mitos_err *e);
/* Validates an extents file held in memory (the reader uses it; so do the tests). */
int memory_extents_parse(const char *name, const uint8_t *buf, size_t len, struct mem_extents *x,
			 struct mitos_err *e);
void memory_extents_free(struct mem_extents *x);

/* Mappings a VM process keeps for itself (libraries, thread stacks, rings, a sanitizer's
 * regions) out of vm.max_map_count: the rest is what a chain may use. */
#define MEMORY_MAP_HEADROOM 4096

/* Whether a chain's layers (their extents; top names the chain in the message) fit in
 * max_maps mappings: each extent is a mapping over the base and splits it, so T
 * extents need up to 2T + 1. 0, or -E2BIG with e saying what to do. memory_map_chain
 * checks it, against this host's vm.max_map_count, before it maps anything. */
int memory_chain_fits(const char *top, const struct mem_extents *layers, unsigned nlayers, uint64_t max_maps,
		      struct mitos_err *e);

/* Maps RAM of `size` bytes from a chain of snapshot dirs, base first: the base's memory
 * file whole, then each layer's extents over it, all MAP_PRIVATE. Reads no page. With
 * `at`, the mapping replaces what is there (a reservation KVM already has as a memslot);
 * on failure that range is left as an inaccessible reservation. */
int memory_map_chain(struct guest_mem *m, uint8_t *at, uint64_t size, char *const *dirs,
		     unsigned n, struct mitos_err *e);

#endif
