"""XenoLinux filesystems: a sans-IO ext2 core, its buffer cache and a test driver."""
