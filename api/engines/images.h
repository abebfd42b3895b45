/* Template images built by tools/build-image: IMAGES/<key>/{rootfs/,rootfs.ext4}
 * and the symlink IMAGES/current-<name>. Resolved once at start, so a rebuild
 * while serve runs changes nothing under running sandboxes; the next start
 * picks it up. */
#ifndef MITOS_API_IMAGES_H
#define MITOS_API_IMAGES_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/error.h"

/* dir: --images (NULL: ${MITOS_CACHE:-$HOME/.cache/mitos}/images; "none": no
 * images, the python template runs on the host's /). agent_path: --agent or NULL
 * (a dynamic agent, as sanitizer builds make, cannot run in the image). An image
 * missing from an explicit dir is an error; from the default dir, a warning and
 * the host's / as before. disk: for the kvm engine, which needs only the ext4 (it
 * boots the image's own agent): never an error, the python template is then missing. */
int images_init(const char *dir, const char *agent_path, bool disk, struct mitos_err *e);
/* ${MITOS_CACHE:-$HOME/.cache/mitos}, where the image and kernel builders cache; -ENOENT
 * when neither is set. */
int images_cache_dir(char *out, size_t outlen);

/* The root directory of an image name (python, default, base), or NULL. */
const char *images_root(const char *image);
/* The ext4 file of the python image for the kvm engine, or NULL when none. */
const char *images_disk(const char *image);
/* True when the python template is the host's own /. */
bool images_host_root(void);

#endif
