#!/usr/bin/env bash
# Build the initramfs that boots a Mitos guest straight into mitos-agent: /init is the
# statically linked agent (PID 1 duties, vsock port 52), plus busybox-static from Debian
# so exec has a shell and the usual commands. See firmware/README.md.
set -euo pipefail

usage() {
	cat <<EOF
Usage: firmware/build-initramfs.sh --agent PATH --out FILE [--no-busybox] [--gzip]

Writes a newc cpio archive to FILE with
  /init                  the mitos-agent binary at PATH (must be statically linked;
                         stripped on the way in)
  /bin/busybox + links   busybox-static's applets (/bin/sh, /bin/echo, ...), unless
                         --no-busybox
  /etc/passwd, /etc/group  root, and nobody for tests of other users
  /proc /sys /dev /tmp /run /root /mnt  empty mount points
/dev/console comes from the kernel's built-in initramfs. The archive is uncompressed
unless --gzip: on emulation-only KVM the guest kernel's inflate runs through KVM's
instruction emulator and costs far more than reading the larger archive
(firmware/PVM-STATUS.md). Files are owned by root with a fixed timestamp, so the same
inputs give the same bytes.

Missing tools (cpio, busybox-static, binutils for strip/readelf) are installed with
apt-get (as root, or through sudo).
EOF
}

agent=""
out=""
busybox=1
compress=0
while (($#)); do
	case $1 in
	--agent)
		(($# >= 2)) || { echo "build-initramfs: --agent needs a path" >&2; exit 2; }
		agent=$2
		shift 2
		;;
	--out)
		(($# >= 2)) || { echo "build-initramfs: --out needs a path" >&2; exit 2; }
		out=$2
		shift 2
		;;
	--no-busybox) busybox=0; shift ;;
	--gzip) compress=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "build-initramfs: unknown argument: $1 (see --help)" >&2; exit 2 ;;
	esac
done
[[ -n $agent && -n $out ]] || { echo "build-initramfs: --agent and --out are required (see --help)" >&2; exit 2; }

prog=build-initramfs
# shellcheck source=firmware/lib-packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-packages.sh"

[[ -f $agent ]] || die "agent binary not found: $agent"
packages=(cpio binutils)
((busybox)) && packages+=(busybox-static)
((compress)) && packages+=(gzip)
ensure_packages "${packages[@]}"
# The initramfs has no loader or libraries: a dynamic agent (a sanitizer build) cannot run.
if readelf -l "$agent" | grep -q 'INTERP'; then
	die "$agent is dynamically linked (a sanitizer build?); the initramfs needs the static agent of a plain build"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,mnt}
chmod 1777 "$stage/tmp"
chmod 0700 "$stage/root"
strip -o "$stage/init" "$agent"
chmod 0755 "$stage/init"
cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$stage/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
if ((busybox)); then
	bb=/bin/busybox
	[[ -x $bb ]] || die "$bb not found (package busybox-static)"
	if readelf -l "$bb" | grep -q 'INTERP'; then
		die "$bb is dynamically linked: install busybox-static, not busybox"
	fi
	cp "$bb" "$stage/bin/busybox"
	# --list-full prints each applet with its directory (bin/sh, usr/bin/env, ...).
	while IFS= read -r applet; do
		[[ -e $stage/$applet ]] || ln -s /bin/busybox "$stage/$applet"
	done < <("$bb" --list-full)
fi

find "$stage" -exec touch -h -d @0 {} +
tmp_out=$out.tmp.$$
(
	cd "$stage"
	find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z |
		cpio --null --create --format=newc --owner=0:0 --reproducible --quiet
) | if ((compress)); then gzip -9 -n; else cat; fi >"$tmp_out"
mv -f "$tmp_out" "$out"
echo "build-initramfs: wrote $out ($(du -h --apparent-size "$out" | cut -f1))" >&2
