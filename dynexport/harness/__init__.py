"""The host-side harness: clips, the PyTorch reference run, the native runtime run on a
device (host, qemu-arm64, adb), and the reports built on them (verify, bench)."""
