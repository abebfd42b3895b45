#include "api/sandbox/registry.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int registry_write_json(const char *path, const cJSON *o)
{
	char *text = cJSON_PrintUnformatted(o);
	if (!text)
		return -ENOMEM;
	char tmp[4200];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		free(text);
		return -errno;
	}
	size_t n = strlen(text), off = 0;
	int rc = 0;
	while (off < n) {
		ssize_t w = write(fd, text + off, n - off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		off += (size_t)w;
	}
	free(text);
	if (close(fd) < 0 && !rc)
		rc = -errno;
	if (!rc && rename(tmp, path) < 0)
		rc = -errno;
	if (rc)
		unlink(tmp);
	return rc;
}

cJSON *registry_read_json(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size > (4 << 20)) {
		close(fd);
		return NULL;
	}
	char *buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return NULL;
	}
	ssize_t n = read(fd, buf, (size_t)st.st_size);
	close(fd);
	if (n != st.st_size) {
		free(buf);
		return NULL;
	}
	buf[n] = 0;
	cJSON *o = cJSON_ParseWithLength(buf, (size_t)n);
	free(buf);
	if (o && !cJSON_IsObject(o)) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

void registry_rfc3339(uint64_t wall_ms, char *out, size_t n)
{
	time_t secs = (time_t)(wall_ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	char base[32];
	strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, n, "%s.%03uZ", base, (unsigned)(wall_ms % 1000));
}

int registry_parse_rfc3339(const char *s, uint64_t *wall_ms)
{
	struct tm tm = { 0 };
	const char *p = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
	if (!p)
		return -EINVAL;
	unsigned ms = 0, digits = 0;
	if (*p == '.') /* a fraction of any length: its milliseconds count */
		for (p++; *p >= '0' && *p <= '9'; p++, digits++)
			if (digits < 3)
				ms = ms * 10 + (unsigned)(*p - '0');
	for (; digits && digits < 3; digits++)
		ms *= 10;
	long offset = 0;
	unsigned oh, om;
	if (*p == 'Z' || *p == 'z')
		p++;
	else if ((*p == '+' || *p == '-') && sscanf(p + 1, "%2u:%2u", &oh, &om) == 2 && oh < 24 && om < 60) {
		offset = (*p == '-' ? -1 : 1) * (long)(oh * 3600 + om * 60);
		p += 6;
	} else {
		return -EINVAL;
	}
	time_t t = timegm(&tm);
	if (*p || t == (time_t)-1 || t - offset < 0)
		return -EINVAL;
	*wall_ms = (uint64_t)(t - offset) * 1000u + ms;
	return 0;
}

int registry_uint_field(const cJSON *o, const char *key, unsigned lo, unsigned hi, unsigned dflt, unsigned *out,
			struct mitos_err *e)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!v) {
		*out = dflt;
		return 0;
	}
	if (!cJSON_IsNumber(v) || v->valuedouble < lo || v->valuedouble > hi ||
	    v->valuedouble != (double)(unsigned)v->valuedouble)
		return mitos_err_set(e, -EINVAL, "%s must be a whole number from %u to %u", key, lo, hi);
	*out = (unsigned)v->valuedouble;
	return 0;
}
