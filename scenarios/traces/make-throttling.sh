#!/bin/sh
# Makes throttling.csv, the starter trace, the way a user would record a
# real machine, but against a fake one: a directory laid out like /dev/cpu
# (N/msr, each MSR at its address) and /sys (the CPUs' topology), whose
# registers this script changes while `cargo xtask record` samples them.
#
# The machine: 2 packages of 2 cores, TjMax 100 °C. The episode: package 1
# heats up, its cores cross threshold #1, then PROCHOT, the package reaches
# its critical temperature, and everything cools down; the logs stay set,
# as no software clears them. Package 0 warms a little and stays quiet.
#
# usage: scenarios/traces/make-throttling.sh [OUT.csv]
set -eu
out=${1:-$(dirname "$0")/throttling.csv}
fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT

# write64 FILE ADDRESS VALUE: the 8 little-endian bytes of VALUE at ADDRESS.
write64() {
	v=$3
	bytes=""
	i=0
	while [ $i -lt 8 ]; do
		bytes="$bytes$(printf '\\%03o' $((v & 255)))"
		v=$((v >> 8))
		i=$((i + 1))
	done
	# shellcheck disable=SC2059
	printf "$bytes" | dd of="$1" bs=1 seek=$(($2)) conv=notrunc status=none
}

core() { write64 "$fake/dev/cpu/$1/msr" 0x19c "$2"; }
package() { write64 "$fake/dev/cpu/$1/msr" 0x1b1 "$2"; }

mkdir -p "$fake/sys/devices/system/cpu"
echo 0-3 >"$fake/sys/devices/system/cpu/online"
for cpu in 0 1 2 3; do
	topology="$fake/sys/devices/system/cpu/cpu$cpu/topology"
	mkdir -p "$topology" "$fake/dev/cpu/$cpu"
	echo $((cpu / 2)) >"$topology/physical_package_id"
	echo $((cpu % 2)) >"$topology/core_id"
	truncate -s 512 "$fake/dev/cpu/$cpu/msr"
	write64 "$fake/dev/cpu/$cpu/msr" 0x1a2 0x640000    # TjMax 100 °C
	core $cpu 0x80320000                               # 50 °C, valid
	package $cpu 0x320000
done

rm -f "$out"
cargo xtask record --out "$out" --interval-us 10000 --duration 3 \
	--msr-dir "$fake/dev/cpu" --sysfs-root "$fake/sys" &
recorder=$!
# The episode starts once the recorder has written its header.
until grep -q '^time_us' "$out" 2>/dev/null; do sleep 0.05; done
sleep 0.2
core 2 0x801400c0       # 80 °C: threshold #1 crossed (and logged)
core 3 0x801600c0       # 78 °C
sleep 0.2
package 2 0x1400c0      # the package crosses it too
package 3 0x1400c0
sleep 0.1
core 1 0x80280000       # package 0 warms to 60 °C
sleep 0.1
core 2 0x800300c3       # 97 °C: PROCHOT
package 2 0x300c3
package 3 0x300c3
sleep 0.2
core 3 0x800400c3       # 96 °C: PROCHOT
sleep 0.2
package 2 0xf3          # 100 °C: package critical
package 3 0xf3
sleep 0.3
core 2 0x800a00c2       # 90 °C: PROCHOT drops, its log stays
core 3 0x800b00c2
package 2 0xa00e2       # critical drops, its log stays
package 3 0xa00e2
sleep 0.3
core 2 0x801e0082       # 70 °C: below threshold #1
core 3 0x801f0082
package 2 0x1e00a2
package 3 0x1e00a2
core 1 0x80320000       # package 0 back at 50 °C
wait $recorder
