"""The host-side harness: clips, the PyTorch reference run, the native runtime run on a
device (host, qemu-arm64, adb), the reports built on them (verify, bench), and
measuring this machine to tune a build's dense cut-offs (tune)."""
