#!/usr/bin/env bash
# Build the Mitos guest kernel (vmlinux + bzImage) from Debian's linux-source-6.1
# with firmware/guest.config applied on top of tinyconfig (and, for a variant, its
# fragment and patches on top of that). See firmware/README.md.
set -euo pipefail

readonly SRC_PKG=linux-source-6.1
# Host tools the build needs besides the source package. bc: kernel/time/timeconst;
# bison/flex: kconfig; libelf-dev: objtool; xz-utils: the source tarball and the
# xz-compressed bzImage; libc6-dev: host programs; patch: a variant's patches.
readonly BUILD_DEPS=(make gcc libc6-dev binutils bc bison flex libelf-dev xz-utils patch)

script_path=$(readlink -f "${BASH_SOURCE[0]}")
script_dir=$(dirname "$script_path")
fragment=$script_dir/guest.config
# Variants: NAME -> firmware/guest-NAME.config merged after guest.config, and the
# patches under firmware/patches applied to their own copy of the source.
readonly VARIANTS=(pvm)

usage() {
	cat <<EOF
Usage: firmware/build-kernel.sh [--variant NAME] [--out DIR] [--jobs N] [--force] [--verbose]

Builds the Mitos guest kernel from Debian's $SRC_PKG package: make tinyconfig,
merge firmware/guest.config (scripts/kconfig/merge_config.sh), make olddefconfig,
check that the final .config kept every option the fragment sets (fails and lists
the ones Kconfig dropped or changed), then make vmlinux and bzImage.

Missing build dependencies ($SRC_PKG ${BUILD_DEPS[*]})
are installed with apt-get (as root, or through sudo).

Outputs (vmlinux, bzImage, System.map, config, build-info.txt) land in
  \${MITOS_CACHE:-\$HOME/.cache/mitos}/kernel/<key>/
with the symlink .../kernel/current (current-NAME for a variant) pointing at the
last one built or reused. <key> is a hash of guest.config, the variant's fragment and
patches, this script and the $SRC_PKG package version; if that directory already
exists the script returns at once without building. The unpacked source and the
object tree are kept under .../kernel/src and .../kernel/build (one of each per
variant), so a rebuild after a config change is incremental.

Variants:
  pvm          for emulation-only KVM hosts (nested "PVM", no VT-x/AMD-V):
               firmware/guest-pvm.config and firmware/patches/*.patch; boot it with
               the command line in firmware/guest-pvm.cmdline (firmware/PVM-STATUS.md)

Options:
  --variant NAME  build a variant (see above) instead of the plain kernel
  --out DIR    also copy the outputs into DIR (created if missing)
  --jobs N     parallel make jobs (default: nproc, here $(nproc))
  --force      rebuild even if outputs for this key exist
  --verbose    stream the make output instead of writing it to a log only
  -h, --help   this text

Progress goes to stderr; the one line on stdout is the directory holding the outputs
(DIR with --out).
EOF
}

out_dir=""
variant=""
jobs=$(nproc)
force=0
verbose=0
while (($#)); do
	case $1 in
	--out)
		(($# >= 2)) || { echo "build-kernel: --out needs a directory" >&2; exit 2; }
		out_dir=$2
		shift 2
		;;
	--out=*) out_dir=${1#--out=}; shift ;;
	--variant)
		(($# >= 2)) || { echo "build-kernel: --variant needs a name" >&2; exit 2; }
		variant=$2
		shift 2
		;;
	--variant=*) variant=${1#--variant=}; shift ;;
	--jobs | -j)
		(($# >= 2)) || { echo "build-kernel: --jobs needs a number" >&2; exit 2; }
		jobs=$2
		shift 2
		;;
	--jobs=*) jobs=${1#--jobs=}; shift ;;
	--force) force=1; shift ;;
	--verbose | -v) verbose=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "build-kernel: unknown argument: $1 (see --help)" >&2; exit 2 ;;
	esac
done
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "build-kernel: --jobs must be a positive integer" >&2; exit 2; }
variant_fragment=""
patches=()
if [[ -n $variant ]]; then
	[[ " ${VARIANTS[*]} " == *" $variant "* ]] ||
		{ echo "build-kernel: unknown variant '$variant' (known: ${VARIANTS[*]})" >&2; exit 2; }
	variant_fragment=$script_dir/guest-$variant.config
	shopt -s nullglob
	patches=("$script_dir"/patches/*.patch)
	shopt -u nullglob
fi

start_time=$(date +%s)
log() {
	printf '[%s +%ds] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - start_time))" "$*" >&2
}
die() {
	printf 'build-kernel: error: %s\n' "$*" >&2
	exit 1
}

[[ -f $fragment ]] || die "config fragment not found: $fragment"
[[ -z $variant_fragment || -f $variant_fragment ]] || die "config fragment not found: $variant_fragment"
[[ $(uname -m) == x86_64 ]] || die "this script builds an x86_64 guest on an x86_64 host only (host: $(uname -m))"
command -v dpkg-query >/dev/null || die "needs a Debian-based host (dpkg/apt) for $SRC_PKG"

cache_root=${MITOS_CACHE:-${HOME:?HOME is not set; set MITOS_CACHE}/.cache/mitos}/kernel
mkdir -p "$cache_root"

# Serialise builds sharing this cache (several engineers, one object tree).
exec 9>"$cache_root/.lock"
if ! flock -n 9; then
	log "another build holds $cache_root/.lock; waiting"
	flock 9
fi

# Prints the packages among "$@" that are not installed.
missing_packages() {
	local p
	for p in "$@"; do
		if [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) != installed ]]; then
			printf '%s\n' "$p"
		fi
	done
}

ensure_packages() {
	local missing=() sudo=()
	mapfile -t missing < <(missing_packages "$@")
	((${#missing[@]})) || return 0
	if ((EUID != 0)); then
		command -v sudo >/dev/null || die "missing packages: ${missing[*]} (run as root or install them)"
		sudo=(sudo)
	fi
	log "installing with apt-get: ${missing[*]}"
	if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -q -y --no-install-recommends "${missing[@]}" >&2; then
		log "apt-get install failed; running apt-get update and retrying"
		"${sudo[@]}" apt-get update -q >&2
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
			apt-get install -q -y --no-install-recommends "${missing[@]}" >&2 ||
			die "could not install: ${missing[*]}"
	fi
}

# Prints the value of option $2 in config file $1 ("" when absent or "is not set").
config_value() {
	awk -v name="$2" 'index($0, name "=") == 1 { print substr($0, length(name) + 2); exit }' "$1"
}

# Checks the final .config against the fragment (the last setting of an option wins,
# as in merge_config.sh); prints every mismatch.
verify_config() {
	local frag=$1 cfg=$2 line name got bad=0
	local -A want=()
	local -a order=()
	while IFS= read -r line; do
		if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
			name=${BASH_REMATCH[1]}
			[[ -v "want[$name]" ]] || order+=("$name")
			want[$name]=${BASH_REMATCH[2]}
		elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
			name=${BASH_REMATCH[1]}
			[[ -v "want[$name]" ]] || order+=("$name")
			want[$name]=n
		fi
	done <"$frag"
	for name in "${order[@]}"; do
		got=$(config_value "$cfg" "$name")
		if [[ ${want[$name]} == n ]]; then
			if [[ -n $got && $got != n ]]; then
				printf '  %s: fragment says not set, final .config has %s (selected by another option?)\n' \
					"$name" "$got" >&2
				bad=1
			fi
		elif [[ $got != "${want[$name]}" ]]; then
			printf '  %s: fragment says %s, final .config has %s\n' \
				"$name" "${want[$name]}" "${got:-not set}" >&2
			bad=1
		fi
	done
	return "$bad"
}

# Publishes the outputs: the "current" symlink and, with --out, a copy in DIR.
finish() {
	local key_dir=$1 f
	local link=current${variant:+-$variant}
	ln -sfn "$key" "$cache_root/.$link.tmp"
	mv -T "$cache_root/.$link.tmp" "$cache_root/$link"
	if [[ -n $out_dir ]]; then
		mkdir -p "$out_dir"
		for f in vmlinux bzImage System.map config build-info.txt; do
			cp -f "$key_dir/$f" "$out_dir/.$f.tmp"
			mv -f "$out_dir/.$f.tmp" "$out_dir/$f"
		done
		log "copied outputs to $out_dir"
		readlink -f "$out_dir"
	else
		printf '%s\n' "$key_dir"
	fi
}

log "stage 1/6: checking $SRC_PKG"
ensure_packages "$SRC_PKG"
src_version=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
key=$(
	{
		printf 'fragment '
		sha256sum <"$fragment"
		if [[ -n $variant ]]; then
			printf 'variant %s ' "$variant"
			sha256sum <"$variant_fragment"
			printf 'patches '
			cat "${patches[@]}" /dev/null | sha256sum
		fi
		printf 'script '
		sha256sum <"$script_path"
		printf '%s %s\n' "$SRC_PKG" "$src_version"
	} | sha256sum | cut -c1-16
)
key_dir=$cache_root/$key
log "$SRC_PKG $src_version${variant:+, variant $variant}, cache key $key"

if ((!force)) && [[ -f $key_dir/vmlinux && -f $key_dir/build-info.txt ]]; then
	log "cached: $key_dir (unchanged fragment, script and source; nothing to build)"
	finish "$key_dir"
	exit 0
fi

log "stage 2/6: build dependencies"
ensure_packages "${BUILD_DEPS[@]}"

log "stage 3/6: source tree"
tarball=$(dpkg -L "$SRC_PKG" | grep -m1 -E "^/usr/src/$SRC_PKG\.tar\.(xz|bz2|gz)$" || true)
[[ -n $tarball && -f $tarball ]] || die "no source tarball listed by dpkg -L $SRC_PKG"
# A variant has its own source copy (its patches must not reach the plain kernel) and
# object tree (switching configs in one tree would rebuild nearly everything).
src_dir=$cache_root/src/$SRC_PKG-$src_version${variant:+-$variant}
build_dir=$cache_root/build/$SRC_PKG-$src_version${variant:+-$variant}
# The marker names the patches applied (empty for none), so a changed patch set
# unpacks afresh.
unpacked_id=""
((${#patches[@]} == 0)) || unpacked_id=$(cat "${patches[@]}" | sha256sum | cut -d' ' -f1)
if [[ ! -f $src_dir/.mitos-unpacked || $(cat "$src_dir/.mitos-unpacked") != "$unpacked_id" ]]; then
	log "unpacking $tarball into $src_dir"
	rm -rf "$src_dir" "$src_dir.tmp"
	mkdir -p "$src_dir.tmp"
	tar -xf "$tarball" -C "$src_dir.tmp" --strip-components=1
	for p in "${patches[@]}"; do
		log "applying $(basename "$p")"
		patch -d "$src_dir.tmp" -p1 --forward --batch --quiet <"$p" >&2 ||
			die "patch $p does not apply to $SRC_PKG $src_version"
	done
	printf '%s' "$unpacked_id" >"$src_dir.tmp/.mitos-unpacked"
	mv -T "$src_dir.tmp" "$src_dir"
else
	log "reusing unpacked source $src_dir"
fi
mkdir -p "$build_dir"
# guest.config, then the variant's fragment: merge_config.sh and verify_config both
# let the last setting of an option win.
merged_fragment=$build_dir/mitos-fragment.config
cat "$fragment" ${variant_fragment:+"$variant_fragment"} >"$merged_fragment"

# A clean, reproducible-ish make environment: no cross compiler or kconfig overrides
# inherited from the caller.
unset CROSS_COMPILE LLVM KBUILD_OUTPUT KCONFIG_CONFIG KCONFIG_ALLCONFIG
export KBUILD_BUILD_USER=mitos KBUILD_BUILD_HOST=mitos
kmake() {
	make -C "$src_dir" O="$build_dir" ARCH=x86_64 "$@"
}
build_log=$build_dir/mitos-build.log
: >"$build_log"

log "stage 4/6: configuring (tinyconfig + guest.config${variant:+ + guest-$variant.config} + olddefconfig)"
{
	kmake tinyconfig
	(cd "$build_dir" && "$src_dir/scripts/kconfig/merge_config.sh" -m -O "$build_dir" \
		"$build_dir/.config" "$merged_fragment")
	kmake olddefconfig
} >>"$build_log" 2>&1 || { tail -n 30 "$build_log" >&2; die "configuration failed; log: $build_log"; }

log "stage 5/6: verifying the final .config against the fragments"
if ! verify_config "$merged_fragment" "$build_dir/.config"; then
	die "Kconfig dropped or changed the options above (unmet dependencies or selects); fix guest.config${variant:+ or guest-$variant.config}. Inspect with: make -C $src_dir O=$build_dir ARCH=x86_64 menuconfig"
fi
log "all options of the fragments are in effect"

log "stage 6/6: building vmlinux and bzImage (make -j$jobs); log: $build_log"
heartbeat_pid=""
if ((verbose)); then
	kmake -j"$jobs" vmlinux bzImage 2>&1 | tee -a "$build_log" >&2 ||
		die "kernel build failed; log: $build_log"
else
	(
		# sleep must not hold stderr or the lock (fd 9) after this loop is killed.
		while sleep 60 >/dev/null 2>&1 9>&-; do
			log "still building: $(tail -n 1 "$build_log" 2>/dev/null | cut -c1-100)"
		done
	) &
	heartbeat_pid=$!
	trap 'kill "$heartbeat_pid" 2>/dev/null || true' EXIT
	if ! kmake -j"$jobs" vmlinux bzImage >>"$build_log" 2>&1; then
		tail -n 40 "$build_log" >&2
		die "kernel build failed; log: $build_log"
	fi
	kill "$heartbeat_pid" 2>/dev/null || true
fi

rm -rf "$key_dir.tmp"
mkdir -p "$key_dir.tmp"
cp "$build_dir/vmlinux" "$key_dir.tmp/vmlinux"
cp "$build_dir/arch/x86/boot/bzImage" "$key_dir.tmp/bzImage"
cp "$build_dir/System.map" "$key_dir.tmp/System.map"
cp "$build_dir/.config" "$key_dir.tmp/config"
{
	echo "key: $key"
	echo "source: $SRC_PKG $src_version"
	echo "kernel release: $(cat "$build_dir/include/config/kernel.release")"
	echo "fragment sha256: $(sha256sum <"$fragment" | cut -d' ' -f1)"
	if [[ -n $variant ]]; then
		echo "variant: $variant ($(basename "$variant_fragment") sha256 $(sha256sum <"$variant_fragment" | cut -d' ' -f1))"
		for p in "${patches[@]}"; do
			echo "patch: $(basename "$p") sha256 $(sha256sum <"$p" | cut -d' ' -f1)"
		done
	fi
	echo "script sha256: $(sha256sum <"$script_path" | cut -d' ' -f1)"
	echo "compiler: gcc $(gcc -dumpfullversion)"
	echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - start_time)) s with -j$jobs"
} >"$key_dir.tmp/build-info.txt"
rm -rf "$key_dir"
mv -T "$key_dir.tmp" "$key_dir"
log "done: $key_dir ($(du -h --apparent-size "$key_dir/vmlinux" | cut -f1) vmlinux, $(du -h --apparent-size "$key_dir/bzImage" | cut -f1) bzImage)"
finish "$key_dir"
