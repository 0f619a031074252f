/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The user-space interface of mlfx_mem.ko: physical RAM, read-only, through one character
 * device that the agent reads at its own pace. The module never writes files or sockets.
 *
 *   open("/dev/mlfx_mem", O_RDONLY)         only one opener at a time (EBUSY otherwise);
 *                                           CAP_SYS_RAWIO required (EPERM); EPERM too when the
 *                                           kernel is locked down for confidentiality (as for
 *                                           /proc/kcore); a write open is refused (EACCES)
 *   ioctl(fd, MLFX_MEM_IOC_INFO, &info)     the module's version, page size and footprint
 *   ioctl(fd, MLFX_MEM_IOC_RANGES, &r)      the whole iomem tree, flattened depth-first
 *   pread(fd, buf, n, physical_address)     bytes of System RAM at that physical address
 *                                           (read() at an lseek position works the same)
 *
 * pread succeeds only inside ranges flagged MLFX_MEM_RANGE_RAM, to their exact bytes (a range
 * that ends inside a page ends the read there). It returns a short count at the first page it
 * cannot read; reading that page then fails with the reason as errno:
 *   ENXIO      not System RAM, or no struct page backs the frame (pfn_valid false)
 *   EHWPOISON  the page is marked hardware-poisoned
 *   EAGAIN     the page is offline (its memory section offline, or logically offline:
 *              ballooned, unplugged by virtio-mem) or otherwise not safe to map: out of the
 *              kernel's direct map (memfd_secret pages, a loaded crash kernel's reserve)
 *   EIO        a machine check while copying (copy_mc)
 * Nothing is ever zero-filled in place of a page that could not be read.
 */
#ifndef MLFX_MEM_UAPI_H
#define MLFX_MEM_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define MLFX_MEM_DEVICE_NAME "mlfx_mem" /* /dev/mlfx_mem */
#define MLFX_MEM_UAPI_VERSION 1

/* A resource of /proc/iomem (all of them, RAM or not, nested ones included).
 * MLFX_MEM_RANGE_RAM marks System RAM (IORESOURCE_SYSTEM_RAM and IORESOURCE_BUSY, what the
 * kernel's own walk_system_ram_range takes) at any depth, such as "System RAM (virtio_mem)"
 * under its device, but only where no ancestor is System RAM: those are the ranges to image.
 * Resources inside one (Kernel code, data, bss, Crash kernel) carry the kernel's System RAM
 * flags too, yet not this one: their bytes are read as part of the range around them. */
#define MLFX_MEM_RANGE_RAM 0x1u   /* outermost System RAM: readable with pread */
#define MLFX_MEM_RANGE_BUSY 0x2u  /* IORESOURCE_BUSY */
struct mlfx_mem_range {
	__u64 start;   /* first physical address */
	__u64 end;     /* last physical address (inclusive, as the kernel and LiME keep it) */
	__u32 depth;   /* 0 for children of the iomem root */
	__u32 flags;   /* MLFX_MEM_RANGE_* */
	char name[48]; /* the resource's name, NUL-terminated, truncated */
};

/* In: capacity and ranges (a user array of `capacity` entries). Out: count, the number of
 * resources in the tree; when count > capacity only `capacity` were copied: call again. */
struct mlfx_mem_ranges {
	__u32 capacity;
	__u32 count;
	__u64 ranges; /* user pointer to struct mlfx_mem_range[capacity] */
};

struct mlfx_mem_info {
	__u32 uapi_version;       /* MLFX_MEM_UAPI_VERSION */
	__u32 page_size;
	__u64 module_core_bytes;  /* the module's own text + data in memory (its footprint) */
	__u64 module_alloc_bytes; /* the most memory the module held at once since it was loaded
	                           * (its bounce page, the RANGES ioctl's snapshot buffer) */
	char module_version[32];
	char kernel_release[65];  /* utsname()->release of the running kernel */
	char reserved[7];
};

#define MLFX_MEM_IOC_MAGIC 'M'
#define MLFX_MEM_IOC_INFO _IOR(MLFX_MEM_IOC_MAGIC, 1, struct mlfx_mem_info)
#define MLFX_MEM_IOC_RANGES _IOWR(MLFX_MEM_IOC_MAGIC, 2, struct mlfx_mem_ranges)

#endif /* MLFX_MEM_UAPI_H */
