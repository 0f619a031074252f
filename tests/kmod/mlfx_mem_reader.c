/*
 * mlfx_mem_reader: a user-space client of /dev/mlfx_mem (kmod/mlfx_mem_uapi.h) for the tests.
 *
 *   mlfx_mem_reader [-d DEVICE] info              the module's INFO
 *   mlfx_mem_reader [-d DEVICE] ranges            the iomem tree as the module sees it
 *   mlfx_mem_reader [-d DEVICE] scan [MARKER]     reads all RAM: unreadable runs with their
 *                                                 reason, and how many pages begin with MARKER
 *   mlfx_mem_reader [-d DEVICE] check [IOMEM]     the interface's invariants (IOMEM: a copy of
 *                                                 /proc/iomem to compare with, default that)
 *   mlfx_mem_reader [-d DEVICE] pages LIST OUT    reads the whole pages whose frame numbers LIST
 *                                                 holds (one hex PFN a line) into OUT, in order;
 *                                                 an unreadable one is "unreadable PFN ERRNO"
 *   mlfx_mem_reader [-d DEVICE] read ADDR LEN     one pread: "read N" or "error ERRNO"
 *   mlfx_mem_reader [-d DEVICE] hold SECONDS      keeps the device open (the rmmod test)
 *
 * Output is one record a line, "key value ...", for the test to parse. Exit status: 0, 1 when
 * a check failed, 2 on a usage error or when the device cannot be used (the message says why).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "mlfx_mem_uapi.h"

#define CHUNK (4u << 20) /* bytes a pread asks for while scanning */

static const char *device = "/dev/" MLFX_MEM_DEVICE_NAME;
static int failures;

static const char *errno_name(int err)
{
	switch (err) {
	case ENXIO: return "ENXIO";
	case EHWPOISON: return "EHWPOISON";
	case EAGAIN: return "EAGAIN";
	case EIO: return "EIO";
	case EFAULT: return "EFAULT";
	case EINVAL: return "EINVAL";
	case EBUSY: return "EBUSY";
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case ENOTTY: return "ENOTTY";
	case EINTR: return "EINTR";
	case ENOENT: return "ENOENT";
	case ENODEV: return "ENODEV";
	default: return "E?";
	}
}

static void check(bool ok, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void check(bool ok, const char *name, const char *fmt, ...)
{
	if (ok) {
		printf("ok %s\n", name);
		return;
	}
	va_list ap;
	printf("FAIL %s: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	failures++;
}

static int open_device(void)
{
	int fd = open(device, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;
		fprintf(stderr, "mlfx_mem_reader: cannot open %s: %s (%s)%s\n", device, strerror(err),
			errno_name(err),
			err == ENOENT  ? "; is mlfx_mem.ko loaded?"
			: err == EBUSY ? "; another reader has it open"
			: err == EPERM ? "; CAP_SYS_RAWIO is required, or the kernel is locked down"
				       : "");
		exit(2);
	}
	return fd;
}

/* ------------------------------------------------------------------------------------------ */

struct tree {
	struct mlfx_mem_range *r;
	uint32_t n;
};

static struct tree get_ranges(int fd)
{
	struct tree t = {0};
	for (int attempt = 0; attempt < 5; attempt++) {
		struct mlfx_mem_ranges req = {.capacity = 0};
		if (ioctl(fd, MLFX_MEM_IOC_RANGES, &req) != 0) {
			fprintf(stderr, "mlfx_mem_reader: RANGES: %s\n", strerror(errno));
			exit(2);
		}
		uint32_t cap = req.count + 16; /* room for a resource added meanwhile */
		free(t.r);
		t.r = calloc(cap, sizeof(*t.r));
		req.capacity = cap;
		req.ranges = (uintptr_t)t.r;
		if (ioctl(fd, MLFX_MEM_IOC_RANGES, &req) != 0) {
			fprintf(stderr, "mlfx_mem_reader: RANGES: %s\n", strerror(errno));
			exit(2);
		}
		if (req.count <= cap) {
			t.n = req.count;
			return t;
		}
	}
	fprintf(stderr, "mlfx_mem_reader: RANGES: the iomem tree keeps growing\n");
	exit(2);
}

static bool is_ram(const struct mlfx_mem_range *r)
{
	return r->flags & MLFX_MEM_RANGE_RAM;
}

static int cmd_info(int fd)
{
	struct mlfx_mem_info info;
	if (ioctl(fd, MLFX_MEM_IOC_INFO, &info) != 0) {
		fprintf(stderr, "mlfx_mem_reader: INFO: %s\n", strerror(errno));
		return 2;
	}
	printf("uapi_version %" PRIu32 "\n", info.uapi_version);
	printf("page_size %" PRIu32 "\n", info.page_size);
	printf("module_core_bytes %" PRIu64 "\n", (uint64_t)info.module_core_bytes);
	printf("module_alloc_bytes %" PRIu64 "\n", (uint64_t)info.module_alloc_bytes);
	printf("module_version %.*s\n", (int)sizeof(info.module_version), info.module_version);
	printf("kernel_release %.*s\n", (int)sizeof(info.kernel_release), info.kernel_release);
	return 0;
}

static int cmd_ranges(int fd)
{
	struct tree t = get_ranges(fd);
	for (uint32_t i = 0; i < t.n; i++) {
		const struct mlfx_mem_range *r = &t.r[i];
		printf("range %#018" PRIx64 " %#018" PRIx64 " depth=%" PRIu32 " ram=%d busy=%d name=%.*s\n",
		       (uint64_t)r->start, (uint64_t)r->end, r->depth, is_ram(r) ? 1 : 0,
		       (r->flags & MLFX_MEM_RANGE_BUSY) ? 1 : 0, (int)sizeof(r->name), r->name);
	}
	free(t.r);
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* scan: every RAM range through pread; unreadable pages grouped into runs of one reason. */

struct run {
	uint64_t start, end; /* inclusive; start > end: none open */
	int err;
};

static void run_flush(struct run *run)
{
	if (run->start <= run->end)
		printf("unreadable %#018" PRIx64 " %#018" PRIx64 " %s pages=%" PRIu64 "\n", run->start,
		       run->end, errno_name(run->err), (run->end - run->start + 1 + 4095) / 4096);
	run->start = 1;
	run->end = 0;
}

static void run_add(struct run *run, uint64_t start, uint64_t end, int err)
{
	if (run->start <= run->end && run->end + 1 == start && run->err == err) {
		run->end = end;
		return;
	}
	run_flush(run);
	run->start = start;
	run->end = end;
	run->err = err;
}

static uint64_t count_marker_pages(const unsigned char *buf, size_t n, uint64_t addr,
				   const char *marker, size_t page)
{
	uint64_t hits = 0;
	size_t len = strlen(marker);
	size_t first = (size_t)((page - addr % page) % page);
	for (size_t off = first; off + len <= n; off += page)
		if (memcmp(buf + off, marker, len) == 0)
			hits++;
	return hits;
}

static int cmd_scan(int fd, const char *marker)
{
	long page = sysconf(_SC_PAGESIZE);
	struct tree t = get_ranges(fd);
	unsigned char *buf = malloc(CHUNK);
	uint64_t ram = 0, got = 0, lost = 0, marker_pages = 0;
	struct run run = {1, 0, 0};

	for (uint32_t i = 0; i < t.n; i++) {
		const struct mlfx_mem_range *r = &t.r[i];
		if (!is_ram(r))
			continue;
		printf("ram %#018" PRIx64 " %#018" PRIx64 " depth=%" PRIu32 " name=%.*s\n",
		       (uint64_t)r->start, (uint64_t)r->end, r->depth, (int)sizeof(r->name), r->name);
		ram += r->end - r->start + 1;
		uint64_t pos = r->start;
		while (pos <= r->end) {
			uint64_t left = r->end - pos + 1;
			size_t want = left < CHUNK ? (size_t)left : CHUNK;
			ssize_t n = pread(fd, buf, want, (off_t)pos);
			if (n > 0) {
				if (marker)
					marker_pages += count_marker_pages(buf, (size_t)n, pos, marker, (size_t)page);
				got += (uint64_t)n;
				pos += (uint64_t)n;
				continue;
			}
			if (n == 0) {
				printf("FAIL scan: pread returned 0 inside RAM at %#" PRIx64 "\n", pos);
				failures++;
				break;
			}
			/* The page at pos cannot be read: to its end, or the range's. */
			int err = errno;
			uint64_t page_end = (pos | (uint64_t)(page - 1));
			uint64_t end = page_end < r->end ? page_end : r->end;
			run_add(&run, pos, end, err);
			lost += end - pos + 1;
			pos = end + 1;
		}
	}
	run_flush(&run);
	printf("summary ram_bytes=%" PRIu64 " read_bytes=%" PRIu64 " unreadable_bytes=%" PRIu64
	       " marker_pages=%" PRIu64 "\n",
	       ram, got, lost, marker_pages);
	free(buf);
	free(t.r);
	return failures ? 1 : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* check */

/* A System RAM line of /proc/iomem that is not inside another one: what the module flags. */
struct iomem_ram {
	uint64_t start, end;
};

static int read_iomem_ram(const char *path, struct iomem_ram *out, int cap, int *top_level)
{
	FILE *f = fopen(path, "r");
	char line[512];
	int n = 0, ram_indent = -1;
	*top_level = 0;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		int indent = 0;
		while (line[indent] == ' ')
			indent++;
		uint64_t start, end;
		int name_at = 0;
		if (sscanf(line + indent, "%" SCNx64 "-%" SCNx64 " : %n", &start, &end, &name_at) != 2 ||
		    !name_at)
			continue;
		if (ram_indent >= 0 && indent <= ram_indent)
			ram_indent = -1;
		if (ram_indent >= 0)
			continue; /* inside a RAM range: Kernel code and the like */
		if (strncmp(line + indent + name_at, "System RAM", 10) != 0)
			continue;
		ram_indent = indent;
		if (indent == 0)
			++*top_level;
		if (n < cap)
			out[n] = (struct iomem_ram){start, end};
		n++;
	}
	fclose(f);
	return n;
}

static bool ram_contains(const struct tree *t, uint64_t addr)
{
	for (uint32_t i = 0; i < t->n; i++)
		if (is_ram(&t->r[i]) && t->r[i].start <= addr && addr <= t->r[i].end)
			return true;
	return false;
}

static ssize_t pread_errno(int fd, void *buf, size_t n, uint64_t addr, int *err)
{
	errno = 0;
	ssize_t got = pread(fd, buf, n, (off_t)addr);
	*err = got < 0 ? errno : 0;
	return got;
}

static void check_info(int fd)
{
	struct mlfx_mem_info info;
	struct utsname u;
	memset(&info, 0x5a, sizeof(info));
	check(ioctl(fd, MLFX_MEM_IOC_INFO, &info) == 0, "info_ioctl", "%s", strerror(errno));
	uname(&u);
	check(info.uapi_version == MLFX_MEM_UAPI_VERSION, "info_uapi_version", "%" PRIu32, info.uapi_version);
	check(info.page_size == (uint32_t)sysconf(_SC_PAGESIZE), "info_page_size", "%" PRIu32, info.page_size);
	check(memchr(info.kernel_release, 0, sizeof(info.kernel_release)) &&
		      strcmp(info.kernel_release, u.release) == 0,
	      "info_kernel_release", "module says %.64s, uname says %s", info.kernel_release, u.release);
	check(memchr(info.module_version, 0, sizeof(info.module_version)) && info.module_version[0],
	      "info_module_version", "not a string");
	check(info.module_core_bytes > 0 && info.module_core_bytes < (64u << 20), "info_core_bytes",
	      "%" PRIu64, (uint64_t)info.module_core_bytes);
	check(info.module_alloc_bytes >= info.page_size && info.module_alloc_bytes < (64u << 20),
	      "info_alloc_bytes", "%" PRIu64, (uint64_t)info.module_alloc_bytes);
}

static void check_tree(int fd, const struct tree *t)
{
	/* Capacity smaller than the tree: the whole count, only capacity entries written. */
	struct mlfx_mem_range two[3];
	memset(two, 0x7e, sizeof(two));
	struct mlfx_mem_ranges req = {.capacity = 2, .ranges = (uintptr_t)two};
	int rc = ioctl(fd, MLFX_MEM_IOC_RANGES, &req);
	check(rc == 0 && req.count >= t->n - 2 && req.count >= 2 && two[2].start == 0x7e7e7e7e7e7e7e7eull &&
		      memcmp(&two[0], &t->r[0], sizeof(two[0])) == 0,
	      "ranges_capacity", "rc=%d count=%" PRIu32, rc, req.count);
	req = (struct mlfx_mem_ranges){.capacity = 4, .ranges = 8}; /* a bad user pointer */
	rc = ioctl(fd, MLFX_MEM_IOC_RANGES, &req);
	check(rc == -1 && errno == EFAULT, "ranges_bad_pointer", "rc=%d errno=%s", rc, errno_name(errno));

	/* Depth-first: ascending starts, each child inside its parent, siblings apart. */
	uint64_t stack_end[128], prev_sibling_end[128];
	bool has_prev[128] = {false};
	bool ok = t->n > 0 && t->r[0].depth == 0;
	char why[256] = "empty tree or first depth not 0";
	for (uint32_t i = 0; ok && i < t->n; i++) {
		const struct mlfx_mem_range *r = &t->r[i];
		uint32_t d = r->depth;
		if (d >= 128 || (i > 0 && d > t->r[i - 1].depth + 1)) {
			snprintf(why, sizeof(why), "entry %" PRIu32 ": depth %" PRIu32 " jumps", i, d);
			ok = false;
			break;
		}
		if (i > 0 && r->start < t->r[i - 1].start) {
			snprintf(why, sizeof(why), "entry %" PRIu32 " starts below the one before", i);
			ok = false;
			break;
		}
		if (r->end < r->start || !memchr(r->name, 0, sizeof(r->name))) {
			snprintf(why, sizeof(why), "entry %" PRIu32 ": end before start or name unterminated", i);
			ok = false;
			break;
		}
		if (d > 0 && r->end > stack_end[d - 1]) {
			snprintf(why, sizeof(why), "entry %" PRIu32 " (%.48s) sticks out of its parent", i, r->name);
			ok = false;
			break;
		}
		if (has_prev[d] && r->start <= prev_sibling_end[d]) {
			snprintf(why, sizeof(why), "entry %" PRIu32 " (%.48s) overlaps its sibling", i, r->name);
			ok = false;
			break;
		}
		stack_end[d] = r->end;
		prev_sibling_end[d] = r->end;
		has_prev[d] = true;
		for (uint32_t k = d + 1; k < 128; k++)
			has_prev[k] = false;
	}
	check(ok, "ranges_tree_order", "%s", why);

	/* RAM on the outermost System RAM only: never one inside another. */
	ok = true;
	int ram_depth = -1;
	for (uint32_t i = 0; i < t->n; i++) {
		int d = (int)t->r[i].depth;
		if (ram_depth >= 0 && d <= ram_depth)
			ram_depth = -1;
		if (is_ram(&t->r[i])) {
			if (ram_depth >= 0)
				ok = false;
			ram_depth = d;
		}
	}
	check(ok, "ranges_ram_outermost", "a RAM range lies inside another");
}

static void check_iomem(const struct tree *t, const char *iomem)
{
	struct iomem_ram want[4096];
	int top_level = 0;
	int n = read_iomem_ram(iomem, want, 4096, &top_level);
	if (n < 0) {
		printf("skip iomem_compare: cannot read %s\n", iomem);
		return;
	}
	if (n > 0 && want[0].start == 0 && want[0].end == 0) {
		printf("skip iomem_compare: %s hides addresses (needs CAP_SYS_ADMIN)\n", iomem);
		return;
	}
	uint32_t ours = 0;
	bool same = true;
	for (uint32_t i = 0; i < t->n; i++) {
		if (!is_ram(&t->r[i]))
			continue;
		if ((int)ours >= n || want[ours].start != t->r[i].start || want[ours].end != t->r[i].end)
			same = false;
		ours++;
	}
	check(same && (int)ours == n, "ram_matches_iomem",
	      "module flags %" PRIu32 " RAM ranges, %s has %d System RAM ranges (outermost)", ours, iomem, n);
	printf("ram_ranges %" PRIu32 " top_level_system_ram %d nested_system_ram %d\n", ours, top_level,
	       n - top_level);
}

static void check_reads(int fd, const struct tree *t)
{
	long page = sysconf(_SC_PAGESIZE);
	unsigned char *a = malloc(3 * (size_t)page), *b = malloc(3 * (size_t)page);
	int err;
	ssize_t n;

	/* Zero bytes: zero, whatever the address. */
	n = pread_errno(fd, a, 0, 0, &err);
	check(n == 0, "read_zero_bytes", "got %zd (%s)", n, errno_name(err));

	/* Outside RAM: ENXIO. The byte after the last RAM range and every non-RAM top-level
	 * resource that holds no RAM. */
	uint64_t last_end = 0;
	for (uint32_t i = 0; i < t->n; i++)
		if (is_ram(&t->r[i]) && t->r[i].end > last_end)
			last_end = t->r[i].end;
	n = pread_errno(fd, a, 16, last_end + 1, &err);
	check(n == -1 && err == ENXIO, "read_past_ram_enxio", "at %#" PRIx64 ": got %zd (%s)", last_end + 1, n,
	      errno_name(err));
	int probed = 0, bad = 0;
	for (uint32_t i = 0; i < t->n; i++) {
		const struct mlfx_mem_range *r = &t->r[i];
		if (is_ram(r) || ram_contains(t, r->start))
			continue;
		n = pread_errno(fd, a, 1, r->start, &err);
		probed++;
		if (!(n == -1 && err == ENXIO)) {
			printf("note non-RAM %.48s at %#" PRIx64 ": got %zd (%s)\n", r->name, (uint64_t)r->start, n,
			       errno_name(err));
			bad++;
		}
	}
	check(probed > 0 && bad == 0, "read_non_ram_enxio", "%d of %d non-RAM resources readable", bad, probed);

	/* Crossing the end of a RAM range into a hole: a short count to the last RAM byte. */
	int crossings = 0;
	bad = 0;
	for (uint32_t i = 0; i < t->n; i++) {
		const struct mlfx_mem_range *r = &t->r[i];
		if (!is_ram(r) || ram_contains(t, r->end + 1) || r->end - r->start + 1 < (uint64_t)page)
			continue;
		uint64_t from = r->end + 1 - (uint64_t)page;
		n = pread_errno(fd, a, 2 * (size_t)page, from, &err);
		if (n == -1)
			continue; /* that page itself is unreadable: scan reports it */
		crossings++;
		if (n != page) {
			printf("note crossing %#" PRIx64 ": got %zd\n", (uint64_t)r->end, n);
			bad++;
		}
		n = pread_errno(fd, a, 1, r->end + 1, &err);
		if (!(n == -1 && err == ENXIO))
			bad++;
	}
	check(crossings > 0 && bad == 0, "read_short_at_ram_end", "%d of %d crossings wrong", bad, crossings);

	/* Kernel text is stable: one unaligned read across pages equals the same bytes read
	 * page by page, and read() at an lseek position equals pread. */
	const struct mlfx_mem_range *code = NULL;
	for (uint32_t i = 0; i < t->n; i++)
		if (strcmp(t->r[i].name, "Kernel code") == 0)
			code = &t->r[i];
	if (!code || code->end - code->start + 1 < 4 * (uint64_t)page) {
		printf("skip read_unaligned: no Kernel code resource\n");
	} else {
		uint64_t at = code->start + (uint64_t)page + 123;
		ssize_t whole = pread(fd, a, 2 * (size_t)page, (off_t)at);
		size_t first = (size_t)page - 123;
		ssize_t p1 = pread(fd, b, first, (off_t)at);
		ssize_t p2 = pread(fd, b + first, 2 * (size_t)page - first, (off_t)(at + first));
		check(whole == 2 * page && p1 == (ssize_t)first && p2 == 2 * page - (ssize_t)first &&
			      memcmp(a, b, 2 * (size_t)page) == 0,
		      "read_unaligned", "whole=%zd parts=%zd+%zd", whole, p1, p2);
		off_t pos = lseek(fd, (off_t)at, SEEK_SET);
		ssize_t r = read(fd, b, 2 * (size_t)page);
		off_t after = lseek(fd, 0, SEEK_CUR);
		check(pos == (off_t)at && r == 2 * page && memcmp(a, b, 2 * (size_t)page) == 0 &&
			      after == (off_t)(at + 2 * (uint64_t)page),
		      "read_at_lseek", "lseek=%jd read=%zd after=%jd", (intmax_t)pos, r, (intmax_t)after);
		bool has_code = false;
		for (int i = 0; i + 1 < 2 * page; i++)
			has_code |= a[i] != 0;
		check(has_code, "read_kernel_code_not_zero", "two pages of kernel text read as zeros");
	}

	/* A bad user buffer: EFAULT, nothing else happens. */
	for (uint32_t i = 0; i < t->n; i++) {
		if (!is_ram(&t->r[i]))
			continue;
		n = pread_errno(fd, (void *)8, 16, t->r[i].start, &err);
		check(n == -1 && err == EFAULT, "read_bad_buffer_efault", "got %zd (%s)", n, errno_name(err));
		break;
	}
	n = ioctl(fd, _IO('M', 99));
	check(n == -1 && errno == ENOTTY, "ioctl_unknown_enotty", "got %zd (%s)", n, errno_name(errno));
	free(a);
	free(b);
}

static void check_opens(void)
{
	int fd2 = open(device, O_RDONLY | O_CLOEXEC);
	int err = errno;
	check(fd2 < 0 && err == EBUSY, "second_open_ebusy", "got fd %d (%s)", fd2, errno_name(err));
	if (fd2 >= 0)
		close(fd2);
}

static void check_write_open(void)
{
	int fd = open(device, O_RDWR | O_CLOEXEC);
	int err = errno;
	check(fd < 0 && err == EACCES, "write_open_eacces", "got fd %d (%s)", fd, errno_name(err));
	if (fd >= 0)
		close(fd);
}

static int cmd_check(const char *iomem)
{
	check_write_open(); /* before we hold the device: a refused open must not keep it */
	int fd = open_device();
	struct tree t = get_ranges(fd);
	check_info(fd);
	check_tree(fd, &t);
	check_iomem(&t, iomem);
	check_reads(fd, &t);
	check_opens();
	free(t.r);
	close(fd);
	/* Closed: it opens again. */
	int fd2 = open(device, O_RDONLY | O_CLOEXEC);
	check(fd2 >= 0, "reopen_after_close", "%s", strerror(errno));
	if (fd2 >= 0)
		close(fd2);
	printf("checks_failed %d\n", failures);
	return failures ? 1 : 0;
}

/* ------------------------------------------------------------------------------------------ */

static int cmd_pages(int fd, const char *list, const char *out)
{
	long page = sysconf(_SC_PAGESIZE);
	FILE *in = fopen(list, "r"), *o = fopen(out, "wb");
	unsigned char *buf = malloc((size_t)page);
	uint64_t pfn, ok = 0, unreadable = 0;
	if (!in || !o) {
		fprintf(stderr, "mlfx_mem_reader: cannot open %s or %s: %s\n", list, out, strerror(errno));
		return 2;
	}
	while (fscanf(in, "%" SCNx64, &pfn) == 1) {
		int err;
		ssize_t n = pread_errno(fd, buf, (size_t)page, pfn * (uint64_t)page, &err);
		if (n != page) {
			printf("unreadable %#" PRIx64 " %s\n", pfn, n < 0 ? errno_name(err) : "SHORT");
			memset(buf, 0, (size_t)page); /* keeps OUT's offsets; the line above says why */
			unreadable++;
		} else {
			ok++;
		}
		fwrite(buf, 1, (size_t)page, o);
	}
	fclose(in);
	if (fclose(o) != 0) {
		fprintf(stderr, "mlfx_mem_reader: writing %s: %s\n", out, strerror(errno));
		return 2;
	}
	printf("pages read=%" PRIu64 " unreadable=%" PRIu64 "\n", ok, unreadable);
	free(buf);
	return 0;
}

static int cmd_read(int fd, const char *addr, const char *len)
{
	uint64_t a = strtoull(addr, NULL, 0), n = strtoull(len, NULL, 0);
	unsigned char *buf = malloc(n ? n : 1);
	int err;
	ssize_t got = pread_errno(fd, buf, n, a, &err);
	if (got < 0)
		printf("error %s\n", errno_name(err));
	else
		printf("read %zd\n", got);
	free(buf);
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: mlfx_mem_reader [-d DEVICE] info|ranges|scan [MARKER]|check [IOMEM]|"
			"pages LIST OUT|read ADDR LEN|hold SECONDS\n");
	return 2;
}

int main(int argc, char **argv)
{
	int i = 1;
	if (i + 1 < argc && strcmp(argv[i], "-d") == 0) {
		device = argv[i + 1];
		i += 2;
	}
	if (i >= argc)
		return usage();
	const char *cmd = argv[i++];
	int rest = argc - i;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (strcmp(cmd, "check") == 0 && rest <= 1)
		return cmd_check(rest ? argv[i] : "/proc/iomem");

	int fd = open_device();
	int rc;
	if (strcmp(cmd, "info") == 0 && rest == 0)
		rc = cmd_info(fd);
	else if (strcmp(cmd, "ranges") == 0 && rest == 0)
		rc = cmd_ranges(fd);
	else if (strcmp(cmd, "scan") == 0 && rest <= 1)
		rc = cmd_scan(fd, rest ? argv[i] : NULL);
	else if (strcmp(cmd, "pages") == 0 && rest == 2)
		rc = cmd_pages(fd, argv[i], argv[i + 1]);
	else if (strcmp(cmd, "read") == 0 && rest == 2)
		rc = cmd_read(fd, argv[i], argv[i + 1]);
	else if (strcmp(cmd, "hold") == 0 && rest == 1) {
		printf("holding %s\n", device);
		sleep((unsigned)atoi(argv[i]));
		rc = 0;
	} else
		rc = usage();
	close(fd);
	return rc;
}
