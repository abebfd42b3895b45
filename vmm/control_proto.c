/* The control protocol's spelling (control_proto.h). */
#include "control_proto.h"
#include "control.h"
#include "lib/printable.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char *const names[CTL_CMDS] = {
	[CTL_STATUS] = "status", [CTL_PAUSE] = "pause", [CTL_RESUME] = "resume", [CTL_STOP] = "stop",
	[CTL_SNAPSHOT] = "snapshot", [CTL_RESTORE] = "restore", [CTL_LINK] = "link",
};

const char *ctl_cmd_name(enum ctl_cmd c)
{
	return (unsigned)c < CTL_CMDS ? names[c] : "?";
}

cJSON *ctl_request_encode(const struct ctl_request *r)
{
	if ((unsigned)r->cmd >= CTL_CMDS || r->ndisks > CTL_MAX_DISKS)
		return NULL;
	cJSON *o = cJSON_CreateObject();
	bool ok = o && cJSON_AddStringToObject(o, "cmd", names[r->cmd]);
	switch (r->cmd) {
	case CTL_SNAPSHOT:
		ok = ok && r->dir && cJSON_AddStringToObject(o, "dir", r->dir);
		break;
	case CTL_RESTORE: {
		ok = ok && r->snapshot && cJSON_AddStringToObject(o, "snapshot", r->snapshot);
		if (ok && r->vsock)
			ok = cJSON_AddStringToObject(o, "vsock", r->vsock) != NULL;
		if (ok && r->tap)
			ok = cJSON_AddStringToObject(o, "tap", r->tap) != NULL;
		if (ok && r->tap_by_fd)
			ok = cJSON_AddNumberToObject(o, "tap_fd", r->tap_fd) != NULL;
		cJSON *disks = ok ? cJSON_AddArrayToObject(o, "disks") : NULL;
		ok = disks != NULL;
		for (unsigned i = 0, fds = 0; ok && i < r->ndisks; i++) {
			cJSON *d = cJSON_CreateObject();
			ok = d && cJSON_AddItemToArray(disks, d) && r->disks[i].path &&
			     cJSON_AddNumberToObject(d, "index", r->disks[i].index) &&
			     cJSON_AddStringToObject(d, "path", r->disks[i].path) &&
			     cJSON_AddBoolToObject(d, "read_only", r->disks[i].read_only) &&
			     (!r->disks[i].by_fd || cJSON_AddNumberToObject(d, "fd", fds++));
		}
		break;
	}
	case CTL_LINK:
		ok = ok && cJSON_AddBoolToObject(o, "up", r->up);
		break;
	default:
		break;
	}
	if (!ok) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

/* A string field: absent is NULL when optional; anything but a non-empty string fails. */
static int str_field(const cJSON *req, const char *key, bool optional, const char **out)
{
	const cJSON *j = cJSON_GetObjectItemCaseSensitive(req, key);
	*out = NULL;
	if (!j)
		return optional ? 0 : -EINVAL;
	if (!cJSON_IsString(j) || !j->valuestring[0])
		return -EINVAL;
	*out = j->valuestring;
	return 0;
}

/* A whole number in 0..limit-1. */
static bool small_uint(const cJSON *j, unsigned limit)
{
	return cJSON_IsNumber(j) && j->valuedouble >= 0 && j->valuedouble < limit &&
	       j->valuedouble == (double)j->valueint;
}

static int decode_disks(const cJSON *req, struct ctl_request *out, struct mitos_err *e)
{
	const cJSON *disks = cJSON_GetObjectItemCaseSensitive(req, "disks");
	if (!disks)
		return 0;
	if (!cJSON_IsArray(disks) || cJSON_GetArraySize(disks) > CTL_MAX_DISKS) {
		mitos_err_set(e, -EINVAL, "\"disks\" must be an array of at most %d disks", CTL_MAX_DISKS);
		return -EINVAL;
	}
	unsigned seen = 0;
	const cJSON *d;
	cJSON_ArrayForEach(d, disks) {
		const cJSON *idx = cJSON_GetObjectItemCaseSensitive(d, "index");
		const cJSON *ro = cJSON_GetObjectItemCaseSensitive(d, "read_only");
		const cJSON *fd = cJSON_GetObjectItemCaseSensitive(d, "fd");
		struct ctl_disk *x = &out->disks[out->ndisks];
		if (!small_uint(idx, CTL_MAX_DISKS) || str_field(d, "path", false, &x->path) ||
		    (ro && !cJSON_IsBool(ro)) || (fd && !small_uint(fd, CTL_MAX_DISKS))) {
			mitos_err_set(e, -EINVAL, "each disk needs \"index\" (0..%d), \"path\" and optionally "
				 "\"read_only\" (a boolean) and \"fd\" (which of the descriptors sent with the "
				 "request, 0..%d)", CTL_MAX_DISKS - 1, CTL_MAX_DISKS - 1);
			return -EINVAL;
		}
		x->index = (unsigned)idx->valueint;
		x->read_only = cJSON_IsTrue(ro);
		x->by_fd = fd != NULL;
		x->fd = fd ? (unsigned)fd->valueint : 0;
		if (seen & (1u << x->index)) {
			mitos_err_set(e, -EINVAL, "disk %u is given twice", x->index);
			return -EINVAL;
		}
		seen |= 1u << x->index;
		out->ndisks++;
	}
	return 0;
}

int ctl_request_decode(const cJSON *req, struct ctl_request *out, const char **code, struct mitos_err *e)
{
	memset(out, 0, sizeof(*out));
	*code = "invalid_request";
	const char *c = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "cmd"));
	if (!cJSON_IsObject(req) || !c) {
		mitos_err_set(e, -EINVAL, "missing \"cmd\"");
		return -EINVAL;
	}
	int i = 0;
	while (i < CTL_CMDS && strcmp(names[i], c))
		i++;
	if (i == CTL_CMDS) {
		*code = "unknown_command";
		mitos_err_set(e, -EINVAL, "unknown command \"%.100s\" (status, pause, resume, snapshot, stop, "
			 "restore, link)", c);
		return -EINVAL;
	}
	out->cmd = (enum ctl_cmd)i;
	switch (out->cmd) {
	case CTL_SNAPSHOT:
		if (str_field(req, "dir", false, &out->dir)) {
			mitos_err_set(e, -EINVAL, "snapshot needs \"dir\"");
			return -EINVAL;
		}
		break;
	case CTL_RESTORE:
		if (str_field(req, "snapshot", false, &out->snapshot) || str_field(req, "vsock", true, &out->vsock) ||
		    str_field(req, "tap", true, &out->tap)) {
			mitos_err_set(e, -EINVAL, "restore needs \"snapshot\", and optionally \"disks\" (array), "
				 "\"vsock\" and \"tap\" (strings)");
			return -EINVAL;
		}
		const cJSON *tfd = cJSON_GetObjectItemCaseSensitive(req, "tap_fd");
		if (tfd && (!small_uint(tfd, CONTROL_MAX_FDS) || out->tap)) {
			mitos_err_set(e, -EINVAL, "\"tap_fd\" is which of the descriptors sent with the request is "
				 "the TAP (0..%d), instead of \"tap\"", CONTROL_MAX_FDS - 1);
			return -EINVAL;
		}
		out->tap_by_fd = tfd != NULL;
		out->tap_fd = tfd ? (unsigned)tfd->valueint : 0;
		return decode_disks(req, out, e);
	case CTL_LINK: {
		const cJSON *up = cJSON_GetObjectItemCaseSensitive(req, "up");
		if (!cJSON_IsBool(up)) {
			mitos_err_set(e, -EINVAL, "link needs \"up\": true or false");
			return -EINVAL;
		}
		out->up = cJSON_IsTrue(up);
		break;
	}
	default:
		break;
	}
	return 0;
}

bool ctl_reply_ok(const cJSON *reply, struct mitos_err *e)
{
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok")))
		return true;
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(reply, "error");
	const char *m = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(err, "message"));
	mitos_err_set(e, -EIO, "%s", m ? m : "the VMM's answer is neither success nor an error");
	/* The VMM may be the guest's (escaped): its words reach logs and clients printable
	 * only, so it cannot forge lines of serve's log. */
	if (e)
		printable_copy(e->msg, sizeof(e->msg), e->msg, sizeof(e->msg), 0);
	return false;
}
