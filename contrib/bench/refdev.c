/*
 * refdev: the device miglab measures the reference C library (libvfio-user) with, for
 * `just bench-reference`. It is built against the user's own libvfio-user build; nothing of
 * the library is part of miglab.
 *
 *   refdev SOCKET [STATE_MIB]
 *
 * BAR0: 4 KiB of trapped registers (plain memory behind the region callback). Migration: a
 * device state of STATE_MIB MiB (default 256), every byte written at start-up, streamed whole in
 * STOP_COPY (and once in PRE_COPY), taken back in RESUMING. DMA is registered (with callbacks
 * that keep nothing) so that the library offers dirty-page logging. The library serves one
 * client, then refdev exits.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvfio-user.h>

static unsigned char bar0_bytes[4096];
static unsigned char *state;
static size_t state_len, state_pos;

static ssize_t bar0_access(vfu_ctx_t *ctx, char *buf, size_t count, loff_t offset, bool is_write)
{
    (void)ctx;
    if (offset < 0 || (size_t)offset > sizeof bar0_bytes || count > sizeof bar0_bytes - (size_t)offset) {
        errno = EINVAL;
        return -1;
    }
    if (is_write)
        memcpy(bar0_bytes + offset, buf, count);
    else
        memcpy(buf, bar0_bytes + offset, count);
    return (ssize_t)count;
}

/* Every arc restarts the stream from its first byte. */
static int transition(vfu_ctx_t *ctx, vfu_migr_state_t to)
{
    (void)ctx;
    (void)to;
    state_pos = 0;
    return 0;
}

static ssize_t read_data(vfu_ctx_t *ctx, void *buf, uint64_t count)
{
    (void)ctx;
    size_t n = state_len - state_pos;
    if (count < n)
        n = (size_t)count;
    memcpy(buf, state + state_pos, n);
    state_pos += n;
    return (ssize_t)n;
}

static ssize_t write_data(vfu_ctx_t *ctx, void *buf, uint64_t count)
{
    (void)ctx;
    if (count > state_len - state_pos) {
        errno = EINVAL;
        return -1;
    }
    memcpy(state + state_pos, buf, (size_t)count);
    state_pos += (size_t)count;
    return (ssize_t)count;
}

static void dma_register(vfu_ctx_t *ctx, vfu_dma_info_t *info) { (void)ctx; (void)info; }
static void dma_unregister(vfu_ctx_t *ctx, vfu_dma_info_t *info) { (void)ctx; (void)info; }

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: refdev SOCKET [STATE_MIB]\n");
        return 2;
    }
    state_len = (size_t)(argc == 3 ? strtoul(argv[2], NULL, 10) : 256) << 20;
    state = malloc(state_len ? state_len : 1);
    if (state == NULL) {
        perror("malloc");
        return 1;
    }
    /* Real data in every page, as the state of a device in use. */
    for (size_t i = 0; i < state_len; i++)
        state[i] = (unsigned char)(i * 7 + i / 4096);

    vfu_ctx_t *ctx = vfu_create_ctx(VFU_TRANS_SOCK, argv[1], 0, NULL, VFU_DEV_TYPE_PCI);
    if (ctx == NULL) {
        perror("vfu_create_ctx");
        return 1;
    }
    const vfu_migration_callbacks_t callbacks = {
        .version = VFU_MIGR_CALLBACKS_VERS,
        .transition = transition,
        .read_data = read_data,
        .write_data = write_data,
    };
    if (vfu_pci_init(ctx, VFU_PCI_TYPE_CONVENTIONAL, PCI_HEADER_TYPE_NORMAL, 0) != 0 ||
        vfu_setup_region(ctx, VFU_PCI_DEV_BAR0_REGION_IDX, sizeof bar0_bytes, bar0_access, VFU_REGION_FLAG_RW, NULL, 0,
                         -1, 0) != 0 ||
        vfu_setup_device_dma(ctx, dma_register, dma_unregister) != 0 ||
        vfu_setup_device_migration_callbacks(ctx, &callbacks) != 0 || vfu_realize_ctx(ctx) != 0 ||
        vfu_attach_ctx(ctx) != 0) {
        perror("setting up the device");
        return 1;
    }
    while (vfu_run_ctx(ctx) >= 0 || errno == EINTR)
        ;
    vfu_destroy_ctx(ctx);
    return 0;
}
