#!/bin/sh
# chassis_control program for ipmi_sim in the bmc tests. ipmi_sim runs
#   chassis-control.sh STATE_DIR get power|boot ...
#   chassis-control.sh STATE_DIR set power 0|1 | reset 1 | shutdown 1 | boot DEV
# Power and boot live in files in STATE_DIR; every request is appended to
# STATE_DIR/log. With STATE_DIR/drop-boot present, boot settings are
# accepted and ignored, like a BMC that drops the override.
d="$1"
shift
echo "$*" >>"$d/log"
op="$1"
shift
case "$op" in
get)
	for k in "$@"; do
		case "$k" in
		power) echo "power:$(cat "$d/power" 2>/dev/null || echo 0)" ;;
		boot) echo "boot:$(cat "$d/boot" 2>/dev/null || echo none)" ;;
		esac
	done
	;;
set)
	while [ $# -ge 2 ]; do
		case "$1" in
		power) echo "$2" >"$d/power" ;;
		reset) echo 1 >"$d/power" ;;
		shutdown) echo 0 >"$d/power" ;;
		boot) [ -e "$d/drop-boot" ] || echo "$2" >"$d/boot" ;;
		esac
		shift 2
	done
	;;
esac
exit 0
