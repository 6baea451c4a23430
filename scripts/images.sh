#!/usr/bin/env bash
# Build the container images with whichever engine this host has, and check them from the inside.
#
#   bash scripts/images.sh          # docker/cpu: build, then the fast unit tier and `reproduce` inside
#   bash scripts/images.sh cpu      # the same
#   bash scripts/images.sh npu      # docker/npu's recipe-stack stage (Ubuntu 18.04, Python 3.7), then
#                                   # `pytest -m unit --fast` inside it
#   bash scripts/images.sh all      # both
#
# What it does, in order:
#  1. Engine: docker when `docker info` answers, else podman when `podman info` answers. With neither,
#     and running as root on a Debian/Ubuntu host, it installs podman (+ runc, uidmap, debootstrap)
#     from the distribution's packages and configures it for a machine without CAP_SYS_RESOURCE and
#     with hybrid cgroups: vfs storage, runc, default ulimits at the current hard limits.
#  2. Base image: the public one (python:3.11-slim-bookworm, ubuntu:18.04) when it is present or can be
#     pulled. Otherwise a STAND-IN is made locally with debootstrap from the distribution archive apt
#     already uses, and the log says how it differs from the public image (docker/README.md too).
#  3. torch: the CPU image needs torch's CPU build, which PyPI does not carry (PyPI's Linux torch is the
#     CUDA build). When download.pytorch.org answers, the Dockerfile's default index is used. When it
#     does not, a local `torch-<pin>+cpu-cp311-*.whl` is staged into docker/cpu/wheels/ (git ignores
#     it): from $FSAF_TORCH_WHEEL_DIR, or from the host pip's find-links folders.
#  4. Build, printing the build time, whether layers came from the cache, and the image size.
#  5. Inside the image, with --network=none (its own init is PID 1): the fast unit tier, and
#     `fsaf-repro reproduce --fit-steps 0` writing into a host folder; report.md must come out there.
#
# Environment: FSAF_ENGINE=docker|podman (force one), FSAF_TORCH_WHEEL_DIR (a folder holding the torch
# CPU wheel), FSAF_IMAGES_OUT (host folder for the run directory; default runs/images),
# FSAF_IMAGES_SKIP_CHECKS=1 (build only). Exit status: non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
target="${1:-cpu}"
case "$target" in cpu|npu|all) ;; *) echo "usage: $0 [cpu|npu|all]" >&2; exit 2 ;; esac

CPU_TAG=fsaf-repro:cpu
NPU_TAG=fsaf-repro:npu-recipe-stack
CPU_PUBLIC_BASE=python:3.11-slim-bookworm
NPU_PUBLIC_BASE=ubuntu:18.04
CPU_STANDIN=localhost/fsaf-standin-python:3.11-slim-bookworm
NPU_STANDIN=localhost/fsaf-standin-ubuntu:18.04
OUT_DIR="${FSAF_IMAGES_OUT:-$ROOT/runs/images}"

log() { echo "images: $*"; }
die() { echo "images: ERROR: $*" >&2; exit 1; }

# --- 1. engine ---------------------------------------------------------------------------------------

configure_podman() {
  local nofile nproc
  # At or below the hard limits, and below what podman's own processes run with: podman lowers its
  # RLIMIT_NPROC to 32768, and runc could not set nofile=20000 (the shell's hard limit) on such a host
  # while 16384 worked. Without CAP_SYS_RESOURCE a container cannot be given more.
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  { [ "$nofile" = unlimited ] || [ "$nofile" -gt 16384 ]; } && nofile=16384
  { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  mkdir -p /etc/containers
  if [ ! -f /etc/containers/storage.conf ]; then
    log "podman: vfs storage (/etc/containers/storage.conf): overlay needs kernel features this host may lack"
    printf '[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\ngraphroot = "/var/lib/containers/storage"\n' \
      > /etc/containers/storage.conf
  fi
  if [ ! -f /etc/containers/containers.conf ]; then
    log "podman: runc (crun refuses hybrid cgroups), default ulimits nofile=$nofile nproc=$nproc" \
        "(the hard limits: raising them needs CAP_SYS_RESOURCE) in /etc/containers/containers.conf"
    printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n\n[engine]\nruntime = "runc"\n' \
      "$nofile" "$nofile" "$nproc" "$nproc" > /etc/containers/containers.conf
  fi
}

apt_install() {
  [ "$(id -u)" = 0 ] || die "need root to install $* (install them, or run as root)"
  command -v apt-get >/dev/null || die "no apt-get: install $* by hand"
  log "installing from the distribution's packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

find_engine() {
  local candidates=(docker podman)
  [ -n "${FSAF_ENGINE:-}" ] && candidates=("$FSAF_ENGINE")
  for e in "${candidates[@]}"; do
    if command -v "$e" >/dev/null && "$e" info >/dev/null 2>&1; then ENGINE=$e; return; fi
    command -v "$e" >/dev/null && log "$e is installed but does not answer (\`$e info\` fails): not used"
  done
  log "no container engine answers: installing podman"
  apt_install podman runc uidmap debootstrap ca-certificates
  configure_podman
  podman info >/dev/null || die "podman was installed but \`podman info\` fails"
  ENGINE=podman
}

# podman as root with no configuration of its own: write the settings this kind of host needs (only
# files that do not exist yet; an existing configuration is left alone).
maybe_configure_podman() {
  if [ "$ENGINE" = podman ] && [ "$(id -u)" = 0 ]; then configure_podman; fi
}

# --- 2. base images ----------------------------------------------------------------------------------

have_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# The http(s) Debian mirror apt already uses (a proxy or mirror that works here), else deb.debian.org.
debian_mirror() {
  local m
  m=$(grep -rhoE '(URIs:|^deb)\s+https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ \
        2>/dev/null | grep -oE 'https?://[^ ]+' | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# debootstrap a root filesystem, add the host's CA bundle (PyPI may be behind an intercepting proxy)
# and import it as an image. $1 tag, $2 suite, $3 mirror, $4 extra packages, $5 debootstrap options,
# $6 description written into the image (/etc/fsaf-standin) and the log.
make_standin() {
  local tag=$1 suite=$2 mirror=$3 include=$4 opts=$5 what=$6 dir
  command -v debootstrap >/dev/null || apt_install debootstrap
  [ "$(id -u)" = 0 ] || die "making a base with debootstrap needs root"
  dir=$(mktemp -d "${TMPDIR:-/tmp}/fsaf-standin.XXXXXX")
  log "making the stand-in $tag: debootstrap --variant=minbase $suite from $mirror (a few minutes)"
  # shellcheck disable=SC2086  # $opts holds several options
  debootstrap --variant=minbase $opts --include="$include" "$suite" "$dir" "$mirror" \
    > "$dir.log" 2>&1 || { tail -n 30 "$dir.log" >&2; die "debootstrap $suite failed (log: $dir.log)"; }
  chmod 0755 "$dir"  # mktemp -d made it 0700: as the image's / it would lock every other user out
  # The host's CA bundle, twice: as the bundle itself, and as a local CA file, so that a later
  # `update-ca-certificates` (run by any apt-get install that touches ca-certificates, as the NPU
  # Dockerfile's does) rebuilds the bundle with it instead of dropping the host proxy's CA.
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$dir/usr/local/share/ca-certificates"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/usr/local/share/ca-certificates/fsaf-host-bundle.crt"
  if [ "$suite" = bionic ]; then  # the public ubuntu:18.04's sources: release, updates, security
    printf 'deb %s %s main restricted universe\n' "$mirror" bionic "$mirror" bionic-updates "$mirror" bionic-security \
      > "$dir/etc/apt/sources.list"
  fi
  [ -e "$dir/usr/local/bin/python" ] || [ ! -e "$dir/usr/bin/python3" ] \
    || ln -s /usr/bin/python3 "$dir/usr/local/bin/python"
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
  printf '%s\n' "$what" > "$dir/etc/fsaf-standin"
  tar -C "$dir" -c . | "$ENGINE" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "$tag" >/dev/null
  rm -rf "$dir" "$dir.log"
}

# $1 public name, $2 stand-in tag, $3 the function that makes the stand-in. Sets BASE.
resolve_base() {
  # Fully qualified: podman would match a short name against any local repository ending in it.
  local public=docker.io/library/$1 standin=$2 maker=$3
  if have_image "$public"; then BASE=$public; log "base: $public (present locally)"; return; fi
  log "base: pulling $public (60 s at most)"
  if timeout 60 "$ENGINE" pull -q "$public" >/dev/null 2>&1; then
    BASE=$public; log "base: $public (pulled)"; return
  fi
  log "base: $public cannot be pulled here (no image registry answers)"
  if have_image "$standin"; then
    log "base: reusing the stand-in $standin made earlier on this host"
  else
    "$maker"
  fi
  BASE=$standin
  log "base: STAND-IN $standin, not the public $public. How it differs:"
  "$ENGINE" run --rm --network=none "$standin" cat /etc/fsaf-standin | sed 's/^/images:   /'
}

make_cpu_standin() {
  local mirror
  mirror=$(debian_mirror)
  make_standin "$CPU_STANDIN" bookworm "$mirror" "python3,python3-venv,ca-certificates" "" \
"stand-in for python:3.11-slim-bookworm, made by scripts/images.sh on $(date -u +%F):
- debootstrap --variant=minbase bookworm from $mirror, plus python3, python3-venv, ca-certificates;
- Python is Debian's python3 $(apt-cache policy python3 2>/dev/null | awk '/Candidate/ {print $2}') in /usr/bin
  (the public image: CPython 3.11.x built from python.org sources in /usr/local); /usr/local/bin/python links to it;
- the CA bundle is this host's /etc/ssl/certs/ca-certificates.crt (it trusts the host's intercepting proxy);
- no pip outside a venv (Debian marks its Python externally managed); the Dockerfile makes its own venv."
}

# Ubuntu's archive keys, by fingerprint: the Ubuntu Archive Automatic Signing Keys (2012) and (2018), as
# Ubuntu's own `ubuntu-keyring` package lists them and `debootstrap` reports them ("Valid Release
# signature (key id 790B...)"). Debian carries no Ubuntu keyring, so the keyring comes from Ubuntu's
# archive as a pinned package, and is trusted only once its keys are these.
UBUNTU_KEYRING_DEB=http://archive.ubuntu.com/ubuntu/pool/main/u/ubuntu-keyring/ubuntu-keyring_2018.09.18.1~18.04.2_all.deb
UBUNTU_KEYRING_SHA256=5d8609563fb3074026b254d7d5248f90d393c7dbafcac48916f333bf3c90fed9
UBUNTU_ARCHIVE_FPRS="790BC7277767219C42C86F933B4FE6ACC0B21F32 F6ECB3762474EDA9D21B7022871920D1991BC93C"

# Prints the path of a keyring holding exactly Ubuntu's archive keys, checked twice: the package by its
# pinned sha256, the keys by their fingerprints. Either mismatch stops the script.
ubuntu_archive_keyring() {
  local dir fprs want
  command -v gpg >/dev/null || apt_install gpg
  dir=$(mktemp -d "${TMPDIR:-/tmp}/fsaf-ubuntu-keyring.XXXXXX")
  curl -fsS --max-time 60 -o "$dir/keyring.deb" "$UBUNTU_KEYRING_DEB" \
    || die "cannot download $UBUNTU_KEYRING_DEB (Ubuntu's archive must answer to make the bionic stand-in)"
  echo "$UBUNTU_KEYRING_SHA256  $dir/keyring.deb" | sha256sum -c --quiet - >/dev/null 2>&1 \
    || die "$UBUNTU_KEYRING_DEB: sha256 differs from the pinned $UBUNTU_KEYRING_SHA256"
  dpkg-deb -x "$dir/keyring.deb" "$dir/x"
  # Trusted: exactly the pinned keys, exported from the package's keyring (which also holds Ubuntu's CD
  # image key); a pinned key missing from the package stops the script.
  GNUPGHOME="$dir" gpg --batch --quiet --import "$dir/x/usr/share/keyrings/ubuntu-archive-keyring.gpg" 2>/dev/null
  # shellcheck disable=SC2086  # the fingerprints are one word each
  GNUPGHOME="$dir" gpg --batch --export $UBUNTU_ARCHIVE_FPRS > "$dir/ubuntu-archive-keyring.gpg"
  fprs=$(GNUPGHOME="$dir" gpg --batch --show-keys --with-colons "$dir/ubuntu-archive-keyring.gpg" 2>/dev/null \
           | awk -F: '$1 == "fpr" {print $10}' | sort | tr '\n' ' ')
  want=$(printf '%s\n' $UBUNTU_ARCHIVE_FPRS | sort | tr '\n' ' ')
  [ "$fprs" = "$want" ] || die "$UBUNTU_KEYRING_DEB holds archive keys '$fprs', expected '$want'"
  echo "$dir/ubuntu-archive-keyring.gpg"
}

make_npu_standin() {
  local keyring
  keyring=$(ubuntu_archive_keyring)
  log "Ubuntu archive keyring: sha256 and key fingerprints match the pins ($UBUNTU_ARCHIVE_FPRS)"
  make_standin "$NPU_STANDIN" bionic http://archive.ubuntu.com/ubuntu \
    "ca-certificates,gnupg" "--keyring=$keyring --components=main,universe" \
"stand-in for ubuntu:18.04, made by scripts/images.sh on $(date -u +%F):
- debootstrap --variant=minbase bionic from http://archive.ubuntu.com/ubuntu (main, universe), the Release
  signature checked against Ubuntu's archive keys (ubuntu-keyring 2018.09.18.1~18.04.2, its sha256 and the
  keys' fingerprints pinned in scripts/images.sh);
- the public image is the same release, minimal, with bionic-updates/security in its sources: this one's
  sources.list names them too, so the Dockerfile's apt-get update reads the same suites;
- the CA bundle is this host's /etc/ssl/certs/ca-certificates.crt (it trusts the host's intercepting proxy),
  also kept as /usr/local/share/ca-certificates/fsaf-host-bundle.crt so update-ca-certificates keeps it."
  rm -rf "$(dirname "$keyring")"
}

# --- 3. torch wheel for the CPU image ----------------------------------------------------------------

stage_torch_wheel() {
  local pin dirs d found="" wheels=docker/cpu/wheels
  pin=$(sed -n 's/^torch==\([^ #]*\).*/\1/p' constraints/current-py311.txt)
  find "$wheels" -maxdepth 1 -name 'torch-*.whl' ! -name "torch-${pin}+cpu-cp311-*.whl" -delete
  if [ -n "$(find "$wheels" -maxdepth 1 -name "torch-${pin}+cpu-cp311-*.whl" -print -quit)" ]; then
    log "torch: using the wheel already staged in $wheels"; TORCH_SOURCE="staged wheel"; return
  fi
  if [ -z "${FSAF_TORCH_WHEEL_DIR:-}" ] && curl -s -o /dev/null --max-time 10 https://download.pytorch.org/whl/cpu/; then
    log "torch: download.pytorch.org answers: the build uses the PyTorch CPU index"
    TORCH_SOURCE="PyTorch CPU index"; return
  fi
  dirs="${FSAF_TORCH_WHEEL_DIR:-} ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true)"
  for d in $dirs; do
    d=${d#file://}
    [ -d "$d" ] || continue
    found=$(find "$d" -maxdepth 1 -name "torch-${pin}+cpu-cp311-*manylinux*x86_64.whl" -print -quit)
    [ -n "$found" ] && break
  done
  [ -n "$found" ] || die "torch: download.pytorch.org does not answer and no torch-${pin}+cpu-cp311 wheel was" \
    "found: put it in a folder and set FSAF_TORCH_WHEEL_DIR (PyPI's torch is the CUDA build)"
  cp "$found" "$wheels/"
  log "torch: download.pytorch.org does not answer; staged $found into $wheels (bind-mounted, not copied, by the build)"
  TORCH_SOURCE="local wheel $(basename "$found")"
}

# --- 4. build ------------------------------------------------------------------------------------------

image_size() { "$ENGINE" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.2f GB (%.0f bytes)", $1/1e9, $1}'; }

build() {  # $1 tag, $2 build log, then the build arguments
  local tag=$1 blog=$2 t0 secs cached total; shift 2
  local pull=() fmt=()
  # podman: docker format, or SHELL (pipefail) is dropped; never pull: the base is resolved above.
  [ "$ENGINE" = podman ] && pull=(--pull=never) && fmt=(--format docker)
  t0=$(date +%s)
  log "build: $ENGINE build -t $tag $*"
  if ! "$ENGINE" build "${fmt[@]}" "${pull[@]}" -t "$tag" "$@" . > "$blog" 2>&1; then
    tail -n 40 "$blog" >&2; die "build of $tag failed (log: $blog)"
  fi
  secs=$(( $(date +%s) - t0 ))
  cached=$(grep -cE 'Using cache|CACHED' "$blog" || true)
  total=$(grep -cE 'STEP [0-9]+/[0-9]+:|^#[0-9]+ \[' "$blog" || true)
  log "build: $tag built in ${secs} s; steps taken from the layer cache: $cached of $total" \
      "(engine's words: $(grep -m1 -oE 'Using cache|CACHED' "$blog" || echo none))"
  log "image size: $tag $(image_size "$tag")"
}

# With vfs storage every superseded build leaves its untagged images behind at full size (this host
# held 69 GB of them before this step existed). Removing the dangling ones keeps the layer cache of every
# tagged image, hence the tag on docker/cpu's build stage: it is what a second build reuses.
prune_dangling() {
  local before after
  before=$("$ENGINE" images -q | wc -l)
  "$ENGINE" image prune -f >/dev/null
  after=$("$ENGINE" images -q | wc -l)
  log "storage: removed $(( before - after )) dangling image(s) left by earlier builds; $after kept"
}

# --- 5. checks inside --------------------------------------------------------------------------------

# No --init: each image has its own init as PID 1 (tini warns when another init is PID 1 above it).
run_in() { "$ENGINE" run --rm --network=none "$@"; }

# The fast unit tier inside image $1 (its log: $OUT_DIR/$2-pytest.log); fails the script when it fails.
run_fast_tier() {
  local tag="$1" name="$2" line rc
  log "in the image $tag: the fast unit tier (python -m pytest -m unit --fast), --network=none"
  set +e
  run_in "$tag" python -m pytest -m unit --fast -q -p no:cacheprovider > "$OUT_DIR/$name-pytest.log" 2>&1
  rc=$?
  set -e
  line=$(grep -E '[0-9]+ (passed|failed|error)' "$OUT_DIR/$name-pytest.log" | tail -n1)
  log "in-container test line ($name): ${line:-none} (exit $rc; log $OUT_DIR/$name-pytest.log)"
  [ "$rc" = 0 ] || { tail -n 40 "$OUT_DIR/$name-pytest.log" >&2; die "the fast unit tier failed in $tag"; }
}

check_cpu() {
  local out="$OUT_DIR/cpu"
  run_fast_tier "$CPU_TAG" cpu
  rm -rf "$out"; mkdir -p "$out"; chmod 0777 "$out"
  log "in the image: fsaf-repro reproduce --fit-steps 0 --run-dir /out/run (host folder $out mounted at /out)"
  run_in -v "$out:/out:Z" "$CPU_TAG" fsaf-repro reproduce --fit-steps 0 --run-dir /out/run \
    > "$OUT_DIR/cpu-reproduce.log" 2>&1 || { tail -n 40 "$OUT_DIR/cpu-reproduce.log" >&2; die "reproduce failed in $CPU_TAG"; }
  [ -s "$out/run/report.md" ] || die "reproduce ran but $out/run/report.md is not on the host"
  log "reproduce: exit 0, report on the host: $out/run/report.md ($(wc -c < "$out/run/report.md") bytes)"
  tail -n 5 "$OUT_DIR/cpu-reproduce.log" | sed 's/^/images:   /'
}

check_npu() {
  run_fast_tier "$NPU_TAG" npu  # the recipe-stack stage: Python 3.7
}

# --- main ----------------------------------------------------------------------------------------------

mkdir -p "$OUT_DIR"
find_engine
maybe_configure_podman
log "engine: $ENGINE ($("$ENGINE" --version))"

if [ "$target" = cpu ] || [ "$target" = all ]; then
  resolve_base "$CPU_PUBLIC_BASE" "$CPU_STANDIN" make_cpu_standin
  stage_torch_wheel
  log "torch source: $TORCH_SOURCE"
  # The build stage first, tagged, so that pruning keeps its layers (torch) for the next build.
  build "$CPU_TAG-build-stage" "$OUT_DIR/cpu-build-stage.log" -f docker/cpu/Dockerfile --target build \
    --build-arg "BASE_IMAGE=$BASE"
  build "$CPU_TAG" "$OUT_DIR/cpu-build.log" -f docker/cpu/Dockerfile --build-arg "BASE_IMAGE=$BASE"
  prune_dangling
  [ "${FSAF_IMAGES_SKIP_CHECKS:-0}" = 1 ] || check_cpu
fi
if [ "$target" = cpu ]; then
  # said plainly on every run of the default target (CI's): the recipe's image is not among what it checked
  log "docker/npu recipe-stack (Python 3.7): not built by this target; 'scripts/images.sh npu' builds it"
  log "  (on a signed, debootstrapped Ubuntu 18.04 stand-in where no registry answers); docker/README.md says"
  log "  what an NPU lab must provide for the cann stage."
fi
if [ "$target" = npu ] || [ "$target" = all ]; then
  resolve_base "$NPU_PUBLIC_BASE" "$NPU_STANDIN" make_npu_standin
  build "$NPU_TAG" "$OUT_DIR/npu-build.log" -f docker/npu/Dockerfile --target recipe-stack \
    --build-arg "BASE_IMAGE=$BASE"
  prune_dangling
  [ "${FSAF_IMAGES_SKIP_CHECKS:-0}" = 1 ] || check_npu
fi
log "done"
