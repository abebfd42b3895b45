#include "api/proxy/preview_token.h"

#include <errno.h>
#include <fcntl.h>
#include <nettle/hmac.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static uint8_t secret[PREVIEW_KEY_BYTES];
static bool have_secret;

void preview_key_set(const uint8_t key[PREVIEW_KEY_BYTES])
{
	memcpy(secret, key, PREVIEW_KEY_BYTES);
	have_secret = true;
}

void preview_key_wipe(void)
{
	explicit_bzero(secret, sizeof(secret));
	have_secret = false;
}

static int read_key(int fd)
{
	uint8_t k[PREVIEW_KEY_BYTES + 1];
	ssize_t n = pread(fd, k, sizeof(k), 0);
	if (n != PREVIEW_KEY_BYTES) {
		explicit_bzero(k, sizeof(k));
		return -EINVAL;
	}
	preview_key_set(k);
	explicit_bzero(k, sizeof(k));
	return 0;
}

int preview_key_load(const char *state_dir, struct mitos_err *e)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/preview.key", state_dir) >= (int)sizeof(path))
		return mitos_err_set(e, -ENAMETOOLONG, "state dir path too long");
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd >= 0) {
		uint8_t k[PREVIEW_KEY_BYTES];
		if (getrandom(k, sizeof(k), 0) != (ssize_t)sizeof(k) || write(fd, k, sizeof(k)) != (ssize_t)sizeof(k) ||
		    fsync(fd)) {
			int err = errno ? errno : EIO;
			explicit_bzero(k, sizeof(k));
			close(fd);
			unlink(path);
			return mitos_err_set(e, -err, "cannot create the preview key %s: %s", path, strerror(err));
		}
		preview_key_set(k);
		explicit_bzero(k, sizeof(k));
		close(fd);
		return 0;
	}
	if (errno != EEXIST)
		return mitos_err_set(e, -errno, "cannot create the preview key %s: %s", path, strerror(errno));
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	if (fd < 0 || fstat(fd, &st)) {
		int err = errno;
		if (fd >= 0)
			close(fd);
		return mitos_err_set(e, -err, "cannot read the preview key %s: %s", path, strerror(err));
	}
	/* Anyone who can read the key can mint preview URLs. */
	if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
		close(fd);
		return mitos_err_set(e, -EPERM, "the preview key %s must be a regular file owned by this user with "
				     "mode 0600 (remediation: chmod 600 it, or delete it to make a new one; existing "
				     "preview URLs then stop working)", path);
	}
	int rc = read_key(fd);
	close(fd);
	if (rc)
		mitos_err_set(e, rc, "the preview key %s is not %d bytes (remediation: delete it; serve makes a new "
			      "one and existing preview URLs stop working)", path, PREVIEW_KEY_BYTES);
	return rc;
}

static void mac_hex(const char *sandbox_id, uint64_t instance, unsigned port, uint64_t expires_s, char hex[65])
{
	char msg[200];
	int n = snprintf(msg, sizeof(msg), "mitos-preview-v2\n%.64s\n%llu\n%u\n%llu", sandbox_id,
			 (unsigned long long)instance, port, (unsigned long long)expires_s);
	struct hmac_sha256_ctx ctx;
	uint8_t d[SHA256_DIGEST_SIZE];
	hmac_sha256_set_key(&ctx, sizeof(secret), secret);
	hmac_sha256_update(&ctx, (size_t)n, (const uint8_t *)msg);
	hmac_sha256_digest(&ctx, sizeof(d), d);
	explicit_bzero(&ctx, sizeof(ctx));
	static const char hx[] = "0123456789abcdef";
	for (size_t i = 0; i < sizeof(d); i++) {
		hex[2 * i] = hx[d[i] >> 4];
		hex[2 * i + 1] = hx[d[i] & 15];
	}
	hex[64] = 0;
}

void preview_token_make(const char *sandbox_id, uint64_t instance, unsigned port, uint64_t expires_s,
			char out[PREVIEW_TOKEN_MAX])
{
	char hex[65];
	mac_hex(sandbox_id, instance, port, expires_s, hex);
	snprintf(out, PREVIEW_TOKEN_MAX, "%llu.%llu.%s", (unsigned long long)expires_s, (unsigned long long)instance,
		 hex);
}

/* A run of 1..13 decimal digits (an instance is a time in ms) ending at a '.', without
 * a leading zero (one spelling per token): its value, and *p moved past the dot. */
static int number_field(const char **p, uint64_t *v)
{
	size_t n = strspn(*p, "0123456789");
	if (!n || n > 13 || (*p)[n] != '.' || (n > 1 && **p == '0'))
		return -EACCES;
	*v = strtoull(*p, NULL, 10);
	*p += n + 1;
	return 0;
}

int preview_token_check(const char *sandbox_id, unsigned port, const char *token, uint64_t now_s,
			uint64_t *expires_s, uint64_t *instance)
{
	if (!have_secret || !token)
		return -EACCES;
	const char *p = token;
	uint64_t exp, inst;
	if (number_field(&p, &exp) || number_field(&p, &inst) || strlen(p) != 64)
		return -EACCES;
	char hex[65];
	mac_hex(sandbox_id, inst, port, exp, hex);
	/* Constant time: how much of a forged MAC is right must not show. */
	unsigned char diff = 0;
	for (size_t i = 0; i < 64; i++)
		diff |= (unsigned char)(hex[i] ^ p[i]);
	if (diff)
		return -EACCES;
	if (expires_s)
		*expires_s = exp;
	if (instance)
		*instance = inst;
	return exp <= now_s ? -ETIME : 0;
}
