/* PID 1 setup for a guest booted with the read-only root image.
 *
 * Every sandbox shares one read-only root image; writes must land in guest
 * memory so that the file system forks together with RAM. So before serving:
 *
 *   1. make mount propagation private (pivot_root refuses shared mounts);
 *   2. mount a tmpfs on an existing empty directory of the image (/mnt, else
 *      /run, else /tmp: the image is read-only, nothing can be created on it);
 *   3. mount overlay(lowerdir=/, upperdir=T/upper, workdir=T/work) on T/root.
 *      overlayfs takes the lower layer from the root filesystem itself, not from
 *      the mounts stacked on it, so the tmpfs on /mnt does not show through;
 *   4. chdir into T/root and pivot_root(".", "."), then detach the old root
 *      that pivot_root stacked underneath (the trick runc uses: no put_old
 *      directory needed). The detached tmpfs stays alive because the overlay
 *      holds it. When / is the initramfs rootfs, pivot_root is refused (EINVAL):
 *      fall back to moving the overlay over / and chroot, as switch_root does;
 *   5. mount /proc, /sys, /dev (devtmpfs), /dev/pts, /dev/shm, /tmp and /run in
 *      the new root, and bring up the loopback interface (port forwarding
 *      connects to 127.0.0.1).
 *
 * The overlay is skipped when / is already writable or the kernel command line
 * has mitos.overlay=0. Zombies, including orphans re-parented to PID 1, are
 * reaped by the event loop's SIGCHLD handler (waitpid(-1)). */
#include "agent/init.h"

#include <arpa/inet.h>

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent/init_net.h"

static int first_err;

static void note(int rc, const char *what)
{
	if (!rc)
		return;
	fprintf(stderr, "mitos-agent init: %s: %s\n", what, strerror(-rc));
	if (!first_err)
		first_err = rc;
}

static int mount_fs(const char *src, const char *target, const char *type, unsigned long flags,
		    const char *data)
{
	mkdir(target, 0755); /* may exist, or the fs may be read-only: mount decides */
	if (mount(src, target, type, flags, data) < 0 && errno != EBUSY)
		return -errno;
	return 0;
}

/* The value of KEY=value on the kernel command line (out gets it), or of the bare word
 * KEY (out ""): true when there. */
static bool cmdline_get(const char *key, char *out, size_t outlen)
{
	char buf[4096];
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = 0;
	size_t k = strlen(key);
	for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n"))
		if (!strncmp(tok, key, k) && (!tok[k] || tok[k] == '=')) {
			snprintf(out, outlen, "%s", tok[k] ? tok + k + 1 : "");
			return true;
		}
	return false;
}

static bool cmdline_has(const char *word)
{
	char v[8];
	return cmdline_get(word, v, sizeof(v)) && !v[0];
}

/* serve --egress on the kvm engine: mitos.net=GUEST,GATEWAY (eth0 on a /30, the
 * default route through the host's end) and mitos.dns=A[,B...] (resolv.conf). */
static int guest_net(void)
{
	char net[64], dns[128], guest[16], gw[16];
	struct in_addr g, r;
	if (!cmdline_get("mitos.net", net, sizeof(net)))
		return 0;
	if (sscanf(net, "%15[^,],%15s", guest, gw) != 2 || inet_pton(AF_INET, guest, &g) != 1 ||
	    inet_pton(AF_INET, gw, &r) != 1)
		return -EINVAL;
	init_net_no_ipv6("all");
	init_net_no_ipv6("default");
	init_net_no_ipv6("eth0");
	int rc = init_net_sandbox_side(ntohl(g.s_addr), ntohl(r.s_addr));
	if (rc || !cmdline_get("mitos.dns", dns, sizeof(dns)))
		return rc;
	FILE *f = fopen("/etc/resolv.conf", "we");
	if (!f)
		return -errno;
	for (char *s = strtok(dns, ","); s; s = strtok(NULL, ","))
		fprintf(f, "nameserver %s\n", s);
	return fclose(f) ? -errno : 0;
}

static bool root_is_writable(void)
{
	struct statvfs sv;
	return statvfs("/", &sv) == 0 && !(sv.f_flag & ST_RDONLY);
}

static const char *overlay_base(void)
{
	static const char *const cands[] = { "/mnt", "/run", "/tmp" };
	struct stat st;
	for (size_t i = 0; i < sizeof(cands) / sizeof(cands[0]); i++)
		if (stat(cands[i], &st) == 0 && S_ISDIR(st.st_mode))
			return cands[i];
	return NULL;
}

static int switch_root_to_overlay(void)
{
	const char *base = overlay_base();
	char upper[64], work[64], root[64], opts[256];
	if (!base)
		return -ENOENT;
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return -errno;
	if (mount("mitos-overlay", base, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0)
		return -errno;
	snprintf(upper, sizeof(upper), "%s/upper", base);
	snprintf(work, sizeof(work), "%s/work", base);
	snprintf(root, sizeof(root), "%s/root", base);
	if (mkdir(upper, 0755) < 0 || mkdir(work, 0755) < 0 || mkdir(root, 0755) < 0)
		return -errno;
	snprintf(opts, sizeof(opts), "lowerdir=/,upperdir=%s,workdir=%s", upper, work);
	if (mount("overlay", root, "overlay", 0, opts) < 0)
		return -errno;
	if (chdir(root) < 0)
		return -errno;
	if (syscall(SYS_pivot_root, ".", ".") == 0) {
		if (umount2(".", MNT_DETACH) < 0)
			return -errno;
	} else if (errno == EINVAL) {
		if (mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0)
			return -errno;
	} else {
		return -errno;
	}
	return chdir("/") < 0 ? -errno : 0;
}

static int loopback_up(void)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	int rc = 0;
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		rc = -errno;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (!rc && ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

int init_setup(void)
{
	first_err = 0;
	/* /proc first: the command line decides about the overlay. */
	note(mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "mount /proc");
	if (!root_is_writable() && !cmdline_has("mitos.overlay=0")) {
		umount2("/proc", MNT_DETACH); /* remounted inside the new root */
		note(switch_root_to_overlay(), "overlay root");
		note(mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "mount /proc");
	}
	note(mount_fs("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "mount /sys");
	note(mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"), "mount /dev");
	note(mount_fs("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666"),
	     "mount /dev/pts");
	note(mount_fs("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"), "mount /dev/shm");
	note(mount_fs("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"), "mount /tmp");
	note(mount_fs("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"), "mount /run");
	/* /dev/ptmx from devtmpfs has no pty instance of its own; point it at devpts. */
	struct stat st;
	if (lstat("/dev/ptmx", &st) == 0 && !S_ISLNK(st.st_mode))
		mount("/dev/pts/ptmx", "/dev/ptmx", NULL, MS_BIND, NULL);
	note(loopback_up(), "loopback up");
	note(guest_net(), "eth0 (mitos.net)");
	if (!getenv("PATH"))
		setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
	if (!getenv("HOME"))
		setenv("HOME", "/root", 1);
	if (chdir("/") < 0)
		note(-errno, "chdir /");
	return first_err;
}

void init_halt(void)
{
	sync();
	/* A microVM has no ACPI, so a power-off would only halt the vCPU and the VMM would
	 * never learn the guest is done. A reboot goes out through the i8042 reset line
	 * (`reboot=k`), which mitos-vmm takes as the end of the VM. */
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}
