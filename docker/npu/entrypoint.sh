#!/usr/bin/env bash
# Entry point of the fsaf-repro NPU image: load the CANN environment (recipe sections 3.2 and 5.2:
# `source /usr/local/Ascend/ascend-toolkit/set_env.sh`), add the host's driver libraries when they are
# mounted, then run the given command (default: an interactive shell).
#
# CANN_SET_ENV and ASCEND_DRIVER_PATH override the two locations (tests use them).
set -eo pipefail

set_env="${CANN_SET_ENV:-/usr/local/Ascend/ascend-toolkit/set_env.sh}"
driver="${ASCEND_DRIVER_PATH:-/usr/local/Ascend/driver}"

if [ ! -f "$set_env" ]; then
  echo "fsaf-entrypoint: $set_env not found: this image has no CANN toolkit;" \
       "build it with the toolkit installer in docker/npu/ (see docker/README.md)" >&2
  exit 1
fi
# set_env.sh reads variables that may be unset, so `set -u` stays off while it runs.
# shellcheck source=/dev/null
. "$set_env"

if [ -d "$driver/lib64" ]; then
  # The driver is mounted from the host (docker run -v /usr/local/Ascend/driver:...): its user-space
  # libraries are needed by ACL at run time and are not part of the toolkit.
  export LD_LIBRARY_PATH="$driver/lib64:$driver/lib64/common:$driver/lib64/driver${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  echo "fsaf-entrypoint: note: $driver is not mounted: atc conversion works, NPU inference needs the" \
       "device and driver mounts (docker/README.md)" >&2
fi

if [ "$#" -eq 0 ]; then
  set -- bash
fi
exec "$@"
