# Kernel modules the guest loads from its initramfs, before its root exists.
# Their dependencies come from the kernel's modules.dep. Everything else (bridge,
# netfilter, veth, ...) the kernel loads on demand with modprobe from the real root.
virtio_pci
virtio_console
virtio_rng
virtio_net
virtio_blk
9pnet_virtio
9p
ext4
overlay
virtio_balloon
