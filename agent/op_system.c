/* health, post_fork (entropy and clock after a snapshot clone) and poweroff. */
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/base64.h"
#include "agent/init.h"
#include "agent/loop.h"
#include "agent/ops.h"

#define MAX_ENTROPY 4096

void op_health_open(struct stream *s, const struct json *req)
{
	struct jw w;
	(void)req;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "version");
	jw_str(&w, MITOS_AGENT_VERSION);
	jw_key(&w, "protocol");
	jw_int(&w, PROTO_VERSION);
	jw_key(&w, "uptime_ms");
	jw_int(&w, (int64_t)(loop_now_ms() - agent_cfg.start_ms));
	jw_key(&w, "pid");
	jw_int(&w, getpid());
	jw_key(&w, "init");
	jw_bool(&w, agent_cfg.init);
	jw_obj_end(&w);
	stream_end_jw(s, &w);
}

/* Mixes bytes into the kernel pool and, when privileged, credits them and
 * forces a CRNG reseed so clones of one snapshot stop sharing RNG state. */
static int add_entropy(const uint8_t *p, size_t n, bool *credited)
{
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = 0;
	/* A plain write mixes without crediting, and needs no privilege. */
	if (write(fd, p, n) != (ssize_t)n)
		rc = -errno;
	struct {
		struct rand_pool_info info;
		uint8_t buf[MAX_ENTROPY];
	} req;
	req.info.entropy_count = (int)(n * 8);
	req.info.buf_size = (int)n;
	memcpy(req.buf, p, n);
	*credited = false;
	if (!rc && ioctl(fd, RNDADDENTROPY, &req) < 0)
		rc = -errno;
	if (!rc && ioctl(fd, RNDRESEEDCRNG) < 0 && errno != ENOTTY && errno != EINVAL)
		rc = -errno;
	*credited = !rc;
	close(fd);
	return rc;
}

void op_post_fork_open(struct stream *s, const struct json *req)
{
	const struct json *ent = json_get(req, "entropy");
	int64_t realtime_ns = 0;
	int erc = 0, crc = 0;
	bool credited = false, has_time;
	uint8_t buf[MAX_ENTROPY + 3];
	size_t n = 0;

	if (ent && (ent->kind != JSON_STR || base64_decoded_max(ent->len) > sizeof(buf) ||
		    base64_decode(ent->str, ent->len, buf, &n) || n > MAX_ENTROPY)) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "entropy must be base64 of at most %d bytes", MAX_ENTROPY);
		return;
	}
	int rc = json_get_int(req, "realtime_ns", 1, INT64_MAX, &realtime_ns);
	if (rc == -EINVAL) {
		stream_end_error(s, PERR_INVALID_ARGUMENT, "realtime_ns must be a positive integer");
		return;
	}
	has_time = rc == 0;
	agent_cfg.generation++;
	if (n)
		erc = add_entropy(buf, n, &credited);
	if (has_time) {
		struct timespec ts = { .tv_sec = realtime_ns / 1000000000, .tv_nsec = realtime_ns % 1000000000 };
		crc = clock_settime(CLOCK_REALTIME, &ts) < 0 ? -errno : 0;
	}
	struct jw w;
	jw_init(&w);
	jw_obj(&w);
	jw_key(&w, "entropy_bytes");
	jw_int(&w, (int64_t)n);
	jw_key(&w, "reseeded");
	jw_bool(&w, credited);
	jw_key(&w, "clock_set");
	jw_bool(&w, has_time && !crc);
	if (erc || crc) {
		char msg[256];
		snprintf(msg, sizeof(msg), "%s%s%s%s", erc ? "entropy: " : "", erc ? strerror(-erc) : "",
			 crc ? (erc ? "; clock_settime: " : "clock_settime: ") : "", crc ? strerror(-crc) : "");
		jw_error(&w, proto_err_from_errno(erc ? erc : crc), msg);
	}
	jw_obj_end(&w);
	stream_end_jw(s, &w);
}

static struct timer poweroff_timer;

static void poweroff_now(struct timer *t)
{
	(void)t;
	init_halt();
}

void op_poweroff_open(struct stream *s, const struct json *req)
{
	(void)req;
	if (!agent_cfg.init) {
		stream_end_error(s, PERR_UNSUPPORTED, "poweroff needs the agent to run as the guest's init");
		return;
	}
	sync();
	stream_end_ok(s);
	/* Give the END frame a moment to reach the host before the VM stops. */
	timer_arm(&poweroff_timer, loop_now_ms() + 50, poweroff_now);
}
