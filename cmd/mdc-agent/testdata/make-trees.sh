#!/usr/bin/env bash
# make-trees.sh: rebuild the fake /sys and /proc trees the agent's fact tests
# read. Their shape is copied from QEMU VMs as Debian's kernel presents them:
# sysfs symlinks and all. Run from this directory; the trees are committed.
#   qemu-uefi: q35 + OVMF, 2 vCPUs, -m 1G (one 1024 MiB DIMM in SMBIOS type 17),
#              virtio-blk vda 4 GiB and vdb 2 GiB, virtio-net eth0 (link up),
#              e1000e eth1 (down), an empty CD drive, loop0, zram0, lo.
#   qemu-bios: i440fx + SeaBIOS, 4 vCPUs, -m 2G (no DMI entries: memory from the
#              memory blocks, one of them offline), SATA disk sda (serial in VPD
#              page 0x80), NVMe nvme0n1, virtio-net eth0, a bridge br0.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf qemu-uefi qemu-bios

w() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" >"$1"; }
wn() { mkdir -p "$(dirname "$1")"; printf '%s' "$2" >"$1"; } # no newline, as some attributes
l() { mkdir -p "$(dirname "$2")"; ln -s "$1" "$2"; }

cpuinfo() { # n, model
	for ((i = 0; i < $1; i++)); do
		printf 'processor\t: %d\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 6\nmodel name\t: %s\nstepping\t: 3\nmicrocode\t: 0x1\ncpu MHz\t\t: 2095.076\ncache size\t: 16384 KB\nphysical id\t: 0\nsiblings\t: %d\ncore id\t\t: %d\ncpu cores\t: %d\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 syscall nx lm rep_good nopl xtopology cpuid tsc_known_freq pni cx16 x2apic hypervisor lahf_lm\nbogomips\t: 4190.15\naddress sizes\t: 40 bits physical, 48 bits virtual\n\n' \
			"$i" "$2" "$1" "$i" "$1"
	done
}

dmi() { # root vendor product serial uuid bios_vendor
	local d=$1/sys/devices/virtual/dmi/id
	w "$d/sys_vendor" "$2"
	w "$d/product_name" "$3"
	w "$d/product_serial" "$4"
	w "$d/product_uuid" "$5"
	w "$d/product_version" "pc-q35-7.2"
	w "$d/bios_vendor" "$6"
	w "$d/board_vendor" ""
	w "$d/chassis_vendor" "QEMU"
	w "$d/chassis_type" "1"
	l ../../devices/virtual/dmi/id "$1/sys/class/dmi/id"
}

virtio_blk() { # root pcislot virtioN name sectors serial
	local dev=$1/sys/devices/pci0000:00/$2/$3
	local b=$dev/block/$4
	w "$b/size" "$5"
	w "$b/removable" "0"
	w "$b/ro" "0"
	w "$b/queue/rotational" "1"
	w "$b/queue/logical_block_size" "512"
	wn "$b/serial" "$6"
	w "$dev/vendor" "0x1af4"
	w "$dev/device" "0x0002"
	l ../../../../bus/virtio/drivers/virtio_blk "$dev/driver"
	l "../../../$3" "$b/device"
	l "../devices/pci0000:00/$2/$3/block/$4" "$1/sys/block/$4"
	mkdir -p "$1/sys/bus/virtio/drivers/virtio_blk"
}

virtio_net() { # root pcislot virtioN name mac carrier speed
	local dev=$1/sys/devices/pci0000:00/$2/$3
	local n=$dev/net/$4
	w "$n/address" "$5"
	w "$n/type" "1"
	w "$n/mtu" "1500"
	w "$n/operstate" "up"
	w "$n/carrier" "$6"
	w "$n/speed" "$7"
	w "$n/duplex" "unknown"
	w "$dev/vendor" "0x1af4"
	w "$dev/device" "0x0001"
	l ../../../../bus/virtio/drivers/virtio_net "$dev/driver"
	l "../../../$3" "$n/device"
	l "../../devices/pci0000:00/$2/$3/net/$4" "$1/sys/class/net/$4"
	mkdir -p "$1/sys/bus/virtio/drivers/virtio_net"
}

virtual_net() { # root name mac type
	local n=$1/sys/devices/virtual/net/$2
	w "$n/address" "$3"
	w "$n/type" "$4"
	w "$n/carrier" "1"
	l "../../devices/virtual/net/$2" "$1/sys/class/net/$2"
}

virtual_block() { # root name sectors
	local b=$1/sys/devices/virtual/block/$2
	w "$b/size" "$3"
	w "$b/removable" "0"
	w "$b/queue/rotational" "0"
	l "../devices/virtual/block/$2" "$1/sys/block/$2"
}

memblocks() { # root count offline-index
	local d=$1/sys/devices/system/memory
	w "$d/block_size_bytes" "8000000" # hex: 128 MiB
	w "$d/auto_online_blocks" "online"
	for ((i = 0; i < $2; i++)); do
		if [ "$i" = "${3:-}" ]; then w "$d/memory$i/state" "offline"; else w "$d/memory$i/state" "online"; fi
		w "$d/memory$i/phys_index" "$(printf '%08x' "$i")"
	done
}

procfs() { # root cpus model memtotal_kb osrelease cmdline
	mkdir -p "$1/proc/sys/kernel"
	cpuinfo "$2" "$3" >"$1/proc/cpuinfo"
	printf 'MemTotal:        %s kB\nMemFree:          912344 kB\nMemAvailable:     901232 kB\nBuffers:               0 kB\n' "$4" >"$1/proc/meminfo"
	w "$1/proc/sys/kernel/osrelease" "$5"
	w "$1/proc/cmdline" "$6"
	w "$1/proc/uptime" "12.34 20.10"
}

# --- qemu-uefi -------------------------------------------------------------
r=qemu-uefi
dmi $r "QEMU" "Standard PC (Q35 + ICH9, 2009)" "" "C0FFEE00-0000-4000-8000-00000000A601" "EDK II"
mkdir -p $r/sys/firmware/efi/efivars $r/sys/firmware/efi/vars
w $r/sys/firmware/efi/fw_platform_size "64"
# SMBIOS type 17 (Memory Device) as QEMU builds it: 40-byte formatted area,
# size 0x0400 MiB at 0x0C, strings "DIMM 0" and "QEMU".
mkdir -p $r/sys/firmware/dmi/entries/17-0
printf '\x11\x28\x00\x11\x00\x10\xfe\xff\xff\xff\xff\xff\x00\x04\x09\x00\x01\x00\x07\x02\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00DIMM 0\x00QEMU\x00\x00' \
	>$r/sys/firmware/dmi/entries/17-0/raw
w $r/sys/firmware/dmi/entries/17-0/type "17"
# type 16 (Physical Memory Array) is not a DIMM and must not count
mkdir -p $r/sys/firmware/dmi/entries/16-0
printf '\x10\x17\x00\x10\x01\x03\x06\x00\x00\x10\x00\xfe\xff\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' >$r/sys/firmware/dmi/entries/16-0/raw
memblocks $r 8
w $r/sys/devices/system/cpu/online "0-1"
w $r/sys/devices/system/cpu/possible "0-1"
virtio_blk $r 0000:00:04.0 virtio2 vda 8388608 disk-a
virtio_blk $r 0000:00:05.0 virtio3 vdb 4194304 disk-b
virtio_net $r 0000:00:03.0 virtio1 eth0 52:54:00:a6:00:01 1 -1
# e1000e eth1, link down: carrier and speed cannot be read then.
dev=$r/sys/devices/pci0000:00/0000:00:02.0
w $dev/net/eth1/address "52:54:00:a6:00:02"
w $dev/net/eth1/type "1"
w $dev/net/eth1/operstate "down"
w $dev/vendor "0x8086"
l ../../../bus/pci/drivers/e1000e $dev/driver
l ../../../0000:00:02.0 $dev/net/eth1/device
l ../../devices/pci0000:00/0000:00:02.0/net/eth1 $r/sys/class/net/eth1
mkdir -p $r/sys/bus/pci/drivers/e1000e
# An empty CD drive on the AHCI controller: size 0.
sr=$r/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0
w $sr/block/sr0/size "0"
w $sr/block/sr0/removable "1"
w $sr/model "QEMU DVD-ROM"
l ../../../0:0:0:0 $sr/block/sr0/device
l ../devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sr0 $r/sys/block/sr0
virtual_block $r loop0 0
virtual_block $r zram0 1048576
virtual_net $r lo 00:00:00:00:00:00 772
procfs $r 2 "QEMU Virtual CPU version 2.5+" 985124 "6.1.0-28-amd64" \
	'BOOT_IMAGE=vmlinuz console=ttyS0,115200 mdc.url=http://10.79.0.1:8080 mdc.machine=525400a60001 mdc.token=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef mdc.mode=commissioning initrd=initrd0'

# --- qemu-bios -------------------------------------------------------------
r=qemu-bios
dmi $r "QEMU" "Standard PC (i440FX + PIIX, 1996)" "Not Specified" "8D2C5E66-7A11-4C1E-9F3B-2A6C2D1E0B02" "SeaBIOS"
memblocks $r 17 16 # 2 GiB online, one block offline
w $r/sys/devices/system/cpu/online "0-3"
sda=$r/sys/devices/pci0000:00/0000:00:1f.2/ata2/host1/target1:0:0/1:0:0:0
w $sda/block/sda/size "20971520"
w $sda/block/sda/removable "0"
w $sda/block/sda/queue/rotational "1"
w $sda/model "QEMU HARDDISK   "
w $sda/vendor "ATA     "
w $sda/rev "2.5+"
# VPD page 0x80: device type, page code, length, then the serial (space-padded).
printf '\x00\x80\x00\x14QM00001             ' >$sda/vpd_pg80
l ../../../../../../../bus/scsi/drivers/sd $sda/driver
l ../../../1:0:0:0 $sda/block/sda/device
l ../devices/pci0000:00/0000:00:1f.2/ata2/host1/target1:0:0/1:0:0:0/block/sda $r/sys/block/sda
mkdir -p $r/sys/bus/scsi/drivers/sd
nv=$r/sys/devices/pci0000:00/0000:00:05.0/nvme/nvme0
w $nv/model "QEMU NVMe Ctrl                          "
w $nv/serial "nvme-serial-1       "
w $nv/firmware_rev "7.2.0   "
w $nv/nvme0n1/size "209715200"
w $nv/nvme0n1/removable "0"
w $nv/nvme0n1/queue/rotational "0"
l ../../nvme0 $nv/nvme0n1/device
l ../devices/pci0000:00/0000:00:05.0/nvme/nvme0/nvme0n1 $r/sys/block/nvme0n1
virtio_net $r 0000:00:03.0 virtio0 eth0 52:54:00:b1:05:01 1 -1
virtual_net $r br0 52:54:00:b1:05:ff 1
virtual_net $r lo 00:00:00:00:00:00 772
procfs $r 4 "Intel Xeon Processor (Cascadelake)" 2010788 "6.1.0-28-amd64" \
	'BOOT_IMAGE=vmlinuz console=ttyS0 mdc.url=http://10.79.0.1:8080/ mdc.machine=52:54:00:b1:05:01 mdc.token=fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210 mdc.mode=role'
mkdir -p $r/etc/mdc
w $r/etc/mdc/image "test-1"
