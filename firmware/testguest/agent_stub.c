/* testguest.mode=agent: a stand-in for mitos-agent, so that the host's whole sandbox
 * lifecycle (`mitos-vmm serve --engine kvm`: boot a template, wait for its agent,
 * snapshot, fork, post-fork, pause, delete) runs on hosts where a real Linux guest cannot
 * boot. It speaks just enough of the agent protocol (agent/PROTOCOL.md) on vsock port 52:
 * HELLO, `health`, `post_fork` (its entropy stirred into the stub's one random state,
 * which a clone inherits from its template as a kernel's pool would; the clock it
 * carries is printed, there is no guest clock to set), and END `unsupported` for every
 * other operation, so a request the stub cannot serve fails cleanly instead of hanging. Frames of other types (DATA,
 * WINDOW, EVENT, CANCEL) belong to streams it already ended and are dropped.
 *
 * The vsock driver is vsock.c's (tg_vsock_serve); this file only parses frames. Each
 * post_fork prints one console line, which the host's tests read back. */
#include "firmware/testguest/tg.h"

#define FRAME_HDR     12
#define KEEP_PAYLOAD  1024u   /* an OPEN's "op" comes first; the rest may be cut */
#define OUT_MAX       TG_VSOCK_SEND_MAX

enum { T_HELLO = 1, T_OPEN = 2, T_END = 6 };

struct stub_conn {
	uint8_t hdr[FRAME_HDR];
	unsigned hdr_have;
	uint32_t len, stream, got;
	uint8_t type;
	uint8_t payload[KEEP_PAYLOAD];
};

static struct stub_conn conns[TG_VSOCK_MAX_CONNS];
static unsigned post_forks;
static uint64_t rng_state = 0xcbf29ce484222325ull; /* the same in every clone until post_fork */

/* ---- output ------------------------------------------------------------------------------- */

struct out {
	char b[OUT_MAX];
	uint32_t n;
};

static void put(struct out *o, const char *s)
{
	while (*s && o->n < OUT_MAX)
		o->b[o->n++] = *s++;
}

static void put_u(struct out *o, uint64_t v)
{
	char d[24];
	unsigned k = 0;
	do
		d[k++] = (char)('0' + v % 10);
	while ((v /= 10) && k < sizeof(d));
	while (k && o->n < OUT_MAX)
		o->b[o->n++] = d[--k];
}

static void be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void send_frame(unsigned conn, uint8_t type, uint32_t stream, const struct out *json)
{
	static uint8_t f[FRAME_HDR + OUT_MAX];
	if (json->n + FRAME_HDR > TG_VSOCK_SEND_MAX)
		return;
	memset(f, 0, FRAME_HDR);
	be32(f, json->n);
	be32(f + 4, stream);
	f[8] = type;
	memcpy(f + FRAME_HDR, json->b, json->n);
	/* A host that gives no credit for a few hundred bytes has gone away. */
	tg_vsock_send(conn, f, FRAME_HDR + json->n);
}

/* ---- requests ----------------------------------------------------------------------------- */

static bool space(uint8_t ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

/* The value of the first member named key of a JSON object, copied into out: a
 * string's characters (plain ones only: nothing the stub reads has escapes) or a
 * number's digits. */
static bool find_member(const uint8_t *p, uint32_t n, const char *key, char *out, unsigned max)
{
	unsigned kl = 0;
	while (key[kl])
		kl++;
	for (uint32_t i = 0; i + kl + 2 <= n; i++) {
		unsigned m = 0;
		while (m < kl && p[i + 1 + m] == (uint8_t)key[m])
			m++;
		if (p[i] != '"' || m < kl || p[i + kl + 1] != '"')
			continue;
		uint32_t j = i + kl + 2;
		while (j < n && space(p[j]))
			j++;
		if (j >= n || p[j++] != ':')
			continue;
		while (j < n && space(p[j]))
			j++;
		bool str = j < n && p[j] == '"';
		j += str;
		unsigned k = 0;
		while (j < n && k + 1 < max && (str ? p[j] != '"' && p[j] != '\\' : p[j] >= '0' && p[j] <= '9'))
			out[k++] = (char)p[j++];
		out[k] = 0;
		return str ? j < n && p[j] == '"' : k > 0;
	}
	return false;
}

/* post_fork: the entropy goes into the random state (FNV-1a), which the console line
 * shows, with the clock the host sent; the host's tests compare them across clones. */
static void post_fork(struct out *o, const struct stub_conn *c, uint32_t kept)
{
	char entropy[128], clock[24];
	unsigned bytes = 0;
	post_forks++;
	if (find_member(c->payload, kept, "entropy", entropy, sizeof(entropy)))
		for (const char *e = entropy; *e; e++, bytes++)
			rng_state = (rng_state ^ (uint8_t)*e) * 0x100000001b3ull;
	if (!find_member(c->payload, kept, "realtime_ns", clock, sizeof(clock)))
		clock[0] = '0', clock[1] = 0;
	tg_printf("agent-stub: post_fork %u rng %lx clock %s\n", post_forks, (unsigned long)rng_state, clock);
	put(o, "{\"entropy_bytes\":");
	put_u(o, bytes * 3 / 4);
	put(o, ",\"reseeded\":");
	put(o, bytes ? "true" : "false");
	put(o, ",\"clock_set\":false,\"stub\":true}");
}

static bool same(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

static void handle_open(unsigned conn, struct stub_conn *c)
{
	char op[40];
	struct out o = { .n = 0 };
	uint32_t kept = c->len < KEEP_PAYLOAD ? c->len : KEEP_PAYLOAD;
	if (!find_member(c->payload, kept, "op", op, sizeof(op))) {
		put(&o, "{\"error\":{\"code\":\"invalid_argument\",\"message\":\"OPEN needs "
		    "{\\\"op\\\": NAME}\"}}");
	} else if (same(op, "health")) {
		put(&o, "{\"version\":\"testguest-agent-stub\",\"protocol\":1,\"uptime_ms\":");
		put_u(&o, tg_ticks() * (1000 / TG_TICKS_PER_SECOND));
		put(&o, ",\"pid\":1,\"init\":true,\"post_forks\":");
		put_u(&o, post_forks);
		put(&o, "}");
	} else if (same(op, "post_fork")) {
		post_fork(&o, c, kept);
	} else {
		put(&o, "{\"error\":{\"code\":\"unsupported\",\"message\":\"the test guest's agent stub "
		    "answers only health and post_fork, not ");
		put(&o, op);
		put(&o, "\"}}");
	}
	send_frame(conn, T_END, c->stream, &o);
}

static void frame_done(unsigned conn, struct stub_conn *c)
{
	if (c->type == T_HELLO && c->stream == 0) {
		struct out o = { .n = 0 };
		put(&o, "{\"version\":1,\"agent\":\"testguest-agent-stub\",\"agent_version\":\"0.1.0\","
		    "\"max_payload\":1048576,\"window\":262144,\"max_streams\":256}");
		send_frame(conn, T_HELLO, 0, &o);
	} else if (c->type == T_OPEN && c->stream) {
		handle_open(conn, c);
	}
}

/* ---- the vsock application ---------------------------------------------------------------- */

static void stub_open(unsigned conn)
{
	conns[conn] = (struct stub_conn){ .hdr_have = 0 };
}

static void stub_data(unsigned conn, const uint8_t *p, uint32_t n)
{
	struct stub_conn *c = &conns[conn];
	while (n) {
		if (c->hdr_have < FRAME_HDR) {
			c->hdr[c->hdr_have++] = *p++;
			n--;
			if (c->hdr_have < FRAME_HDR)
				continue;
			c->len = (uint32_t)c->hdr[0] << 24 | (uint32_t)c->hdr[1] << 16 |
				 (uint32_t)c->hdr[2] << 8 | c->hdr[3];
			c->stream = (uint32_t)c->hdr[4] << 24 | (uint32_t)c->hdr[5] << 16 |
				    (uint32_t)c->hdr[6] << 8 | c->hdr[7];
			c->type = c->hdr[8];
			c->got = 0;
		} else {
			uint32_t k = c->len - c->got < n ? c->len - c->got : n;
			for (uint32_t i = 0; i < k; i++)
				if (c->got + i < KEEP_PAYLOAD)
					c->payload[c->got + i] = p[i];
			c->got += k;
			p += k;
			n -= k;
		}
		if (c->hdr_have == FRAME_HDR && c->got == c->len) {
			frame_done(conn, c);
			c->hdr_have = 0;
		}
	}
}

void tg_agent_run(const struct tg_virtio_dev *devs, unsigned n)
{
	static const struct tg_vsock_app app = { stub_open, stub_data };
	tg_printf("agent-stub: answering HELLO, health and post_fork on vsock port %u\n",
		  TG_AGENT_PORT);
	tg_vsock_serve(devs, n, TG_AGENT_PORT, &app);
}
