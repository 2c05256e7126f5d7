-- vfio-user dissector for Wireshark, for the captures miglab writes (`miglab tap --pcapng`,
-- `miglab trace FILE --pcapng`). Install: copy this file to ~/.local/lib/wireshark/plugins/
-- (or run `wireshark -X lua_script:vfio_user.lua`); see the project's README.
--
-- A packet is one vfio-user message (link type USER0) after a 16-byte header of miglab's:
--   magic "vfuT", version u8 (1), direction u8 (0 client to server, 1 server to client),
--   fds u16, the message's whole length u32, session name length u16, flags u16 (bit 0: the
--   trace kept only the first bytes of the payload), then the session name.
-- Every command and reply of the protocol is decoded (migration v2: DEVICE_FEATURE with its
-- MIGRATION, MIG_DEVICE_STATE and DMA logging sub-commands, MIG_DATA_READ/WRITE); a payload
-- the capture cut is decoded as far as it goes and marked.
--
-- Filters: vfio_user.cmd == 16, vfio_user.cmd_name == "DEVICE_FEATURE",
-- vfio_user.mig.state_name == "STOP_COPY", vfio_user.flags.error, vfio_user.nfds > 0,
-- vfio_user.session == "source", vfio_user.region.index == 7 ...
--
-- SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

local proto = Proto("vfio_user", "vfio-user")

local function has(value, bit)
    return math.floor(value / bit) % 2 == 1
end

local COMMANDS = {
    [1] = "VERSION", [2] = "DMA_MAP", [3] = "DMA_UNMAP", [4] = "DEVICE_GET_INFO",
    [5] = "DEVICE_GET_REGION_INFO", [6] = "DEVICE_GET_REGION_IO_FDS", [7] = "DEVICE_GET_IRQ_INFO",
    [8] = "DEVICE_SET_IRQS", [9] = "REGION_READ", [10] = "REGION_WRITE", [11] = "DMA_READ",
    [12] = "DMA_WRITE", [13] = "DEVICE_RESET", [14] = "DIRTY_PAGES (retired)",
    [15] = "REGION_WRITE_MULTI", [16] = "DEVICE_FEATURE", [17] = "MIG_DATA_READ",
    [18] = "MIG_DATA_WRITE",
}

local ERRNOS = {
    [0] = "none", [1] = "EPERM", [2] = "ENOENT", [3] = "ESRCH", [4] = "EINTR", [5] = "EIO", [6] = "ENXIO",
    [7] = "E2BIG", [9] = "EBADF", [11] = "EAGAIN", [12] = "ENOMEM", [13] = "EACCES",
    [14] = "EFAULT", [16] = "EBUSY", [17] = "EEXIST", [19] = "ENODEV", [22] = "EINVAL",
    [24] = "EMFILE", [25] = "ENOTTY", [27] = "EFBIG", [28] = "ENOSPC", [32] = "EPIPE",
    [34] = "ERANGE", [38] = "ENOSYS", [61] = "ENODATA", [71] = "EPROTO", [74] = "EBADMSG",
    [75] = "EOVERFLOW", [95] = "ENOTSUP", [104] = "ECONNRESET", [110] = "ETIMEDOUT",
}

local STATES = {
    [0] = "ERROR", [1] = "STOP", [2] = "RUNNING", [3] = "STOP_COPY", [4] = "RESUMING",
    [5] = "RUNNING_P2P", [6] = "PRE_COPY", [7] = "PRE_COPY_P2P",
}

local FEATURES = {
    [1] = "MIGRATION", [2] = "MIG_DEVICE_STATE", [6] = "DMA_LOGGING_START",
    [7] = "DMA_LOGGING_STOP", [8] = "DMA_LOGGING_REPORT",
}

local REGIONS = {
    [0] = "BAR0", [1] = "BAR1", [2] = "BAR2", [3] = "BAR3", [4] = "BAR4", [5] = "BAR5",
    [6] = "ROM", [7] = "CONFIG", [8] = "VGA",
}

local IRQS = { [0] = "INTX", [1] = "MSI", [2] = "MSIX", [3] = "ERR", [4] = "REQ" }

local DIRECTIONS = { [0] = "client to server", [1] = "server to client" }

local f = {}

-- miglab's packet header
f.magic = ProtoField.string("vfio_user.capture.magic", "Magic")
f.direction = ProtoField.uint8("vfio_user.direction", "Direction", base.DEC, DIRECTIONS)
f.nfds = ProtoField.uint16("vfio_user.nfds", "File descriptors passed (SCM_RIGHTS)")
f.whole = ProtoField.uint32("vfio_user.capture.length", "Message length on the wire")
f.session_len = ProtoField.uint16("vfio_user.capture.session_len", "Session name length")
f.cut = ProtoField.bool("vfio_user.capture.cut", "Payload cut by the trace", 16, nil, 0x0001)
f.session = ProtoField.string("vfio_user.session", "Session")

-- the message header
f.msg_id = ProtoField.uint16("vfio_user.msg_id", "Message ID")
f.cmd = ProtoField.uint16("vfio_user.cmd", "Command", base.DEC, COMMANDS)
f.cmd_name = ProtoField.string("vfio_user.cmd_name", "Command name")
f.size = ProtoField.uint32("vfio_user.size", "Message size")
f.flags = ProtoField.uint32("vfio_user.flags", "Flags", base.HEX)
f.flags_type = ProtoField.uint32("vfio_user.flags.type", "Type", base.DEC,
    { [0] = "command", [1] = "reply" }, 0x0000000f)
f.flags_no_reply = ProtoField.bool("vfio_user.flags.no_reply", "No reply", 32, nil, 0x00000010)
f.flags_error = ProtoField.bool("vfio_user.flags.error", "Error", 32, nil, 0x00000020)
f.error_no = ProtoField.uint32("vfio_user.error_no", "Error number", base.DEC, ERRNOS)
f.errno_name = ProtoField.string("vfio_user.errno_name", "Error name")
f.request_in = ProtoField.framenum("vfio_user.request_in", "Request in", base.NONE, frametype.REQUEST)
f.response_in = ProtoField.framenum("vfio_user.response_in", "Response in", base.NONE, frametype.RESPONSE)
f.data = ProtoField.bytes("vfio_user.data", "Data")
f.data_len = ProtoField.uint32("vfio_user.data_len", "Data length")
f.argsz = ProtoField.uint32("vfio_user.argsz", "argsz")
f.reserved = ProtoField.uint32("vfio_user.reserved", "Reserved")
f.payload_flags = ProtoField.uint32("vfio_user.payload_flags", "Flags", base.HEX)

-- VERSION
f.major = ProtoField.uint16("vfio_user.version.major", "Major")
f.minor = ProtoField.uint16("vfio_user.version.minor", "Minor")
f.json = ProtoField.string("vfio_user.version.capabilities", "Capabilities (JSON)")

-- DMA_MAP, DMA_UNMAP
f.dma_flags = ProtoField.uint32("vfio_user.dma_map.flags", "Flags", base.HEX)
f.dma_read = ProtoField.bool("vfio_user.dma_map.flags.read", "READ", 32, nil, 0x1)
f.dma_write = ProtoField.bool("vfio_user.dma_map.flags.write", "WRITE", 32, nil, 0x2)
f.unmap_flags = ProtoField.uint32("vfio_user.dma_unmap.flags", "Flags", base.HEX)
f.unmap_dirty = ProtoField.bool("vfio_user.dma_unmap.flags.get_dirty_bitmap", "GET_DIRTY_BITMAP", 32, nil, 0x1)
f.unmap_all = ProtoField.bool("vfio_user.dma_unmap.flags.all", "ALL", 32, nil, 0x2)
f.map_offset = ProtoField.uint64("vfio_user.dma_map.offset", "Offset in the fd", base.HEX)
f.map_addr = ProtoField.uint64("vfio_user.dma_map.addr", "Address (IOVA)", base.HEX)
f.map_size = ProtoField.uint64("vfio_user.dma_map.size", "Size", base.HEX)

-- DEVICE_GET_INFO
f.dev_flags = ProtoField.uint32("vfio_user.device_info.flags", "Flags", base.HEX)
f.dev_reset = ProtoField.bool("vfio_user.device_info.flags.reset", "RESET", 32, nil, 0x1)
f.dev_pci = ProtoField.bool("vfio_user.device_info.flags.pci", "PCI", 32, nil, 0x2)
f.num_regions = ProtoField.uint32("vfio_user.device_info.num_regions", "Regions")
f.num_irqs = ProtoField.uint32("vfio_user.device_info.num_irqs", "IRQ indexes")

-- DEVICE_GET_REGION_INFO, DEVICE_GET_REGION_IO_FDS
f.reg_flags = ProtoField.uint32("vfio_user.region_info.flags", "Flags", base.HEX)
f.reg_read = ProtoField.bool("vfio_user.region_info.flags.read", "READ", 32, nil, 0x1)
f.reg_write = ProtoField.bool("vfio_user.region_info.flags.write", "WRITE", 32, nil, 0x2)
f.reg_mmap = ProtoField.bool("vfio_user.region_info.flags.mmap", "MMAP", 32, nil, 0x4)
f.reg_caps = ProtoField.bool("vfio_user.region_info.flags.caps", "CAPS", 32, nil, 0x8)
f.reg_index = ProtoField.uint32("vfio_user.region.index", "Region", base.DEC, REGIONS)
f.reg_name = ProtoField.string("vfio_user.region.name", "Region name")
f.cap_offset = ProtoField.uint32("vfio_user.region_info.cap_offset", "Capabilities offset")
f.reg_size = ProtoField.uint64("vfio_user.region_info.size", "Size", base.HEX)
f.reg_offset = ProtoField.uint64("vfio_user.region_info.offset", "mmap offset", base.HEX)
f.cap_id = ProtoField.uint16("vfio_user.cap.id", "Capability", base.DEC, { [1] = "SPARSE_MMAP" })
f.cap_version = ProtoField.uint16("vfio_user.cap.version", "Version")
f.cap_next = ProtoField.uint32("vfio_user.cap.next", "Next")
f.nr_areas = ProtoField.uint32("vfio_user.sparse.nr_areas", "Areas")
f.area_offset = ProtoField.uint64("vfio_user.sparse.offset", "Area offset", base.HEX)
f.area_size = ProtoField.uint64("vfio_user.sparse.size", "Area size", base.HEX)
f.io_count = ProtoField.uint32("vfio_user.io_fds.count", "Sub-regions")
f.io_offset = ProtoField.uint64("vfio_user.io_fd.offset", "Offset", base.HEX)
f.io_size = ProtoField.uint64("vfio_user.io_fd.size", "Size")
f.io_fd_index = ProtoField.uint32("vfio_user.io_fd.fd_index", "fd index")
f.io_type = ProtoField.uint32("vfio_user.io_fd.type", "Type", base.DEC, { [0] = "IOEVENTFD" })
f.io_flags = ProtoField.uint32("vfio_user.io_fd.flags", "Flags (1: DATAMATCH)", base.HEX)
f.io_datamatch = ProtoField.uint64("vfio_user.io_fd.datamatch", "Datamatch", base.HEX)

-- DEVICE_GET_IRQ_INFO, DEVICE_SET_IRQS
f.irq_flags = ProtoField.uint32("vfio_user.irq_info.flags", "Flags", base.HEX)
f.irq_eventfd = ProtoField.bool("vfio_user.irq_info.flags.eventfd", "EVENTFD", 32, nil, 0x1)
f.irq_maskable = ProtoField.bool("vfio_user.irq_info.flags.maskable", "MASKABLE", 32, nil, 0x2)
f.irq_automasked = ProtoField.bool("vfio_user.irq_info.flags.automasked", "AUTOMASKED", 32, nil, 0x4)
f.irq_noresize = ProtoField.bool("vfio_user.irq_info.flags.noresize", "NORESIZE", 32, nil, 0x8)
f.irq_index = ProtoField.uint32("vfio_user.irq.index", "IRQ index", base.DEC, IRQS)
f.irq_count = ProtoField.uint32("vfio_user.irq.count", "Count")
f.irq_start = ProtoField.uint32("vfio_user.irq.start", "Start")
f.set_flags = ProtoField.uint32("vfio_user.set_irqs.flags", "Flags", base.HEX)
f.set_none = ProtoField.bool("vfio_user.set_irqs.flags.data_none", "DATA_NONE", 32, nil, 0x1)
f.set_bool = ProtoField.bool("vfio_user.set_irqs.flags.data_bool", "DATA_BOOL", 32, nil, 0x2)
f.set_eventfd = ProtoField.bool("vfio_user.set_irqs.flags.data_eventfd", "DATA_EVENTFD", 32, nil, 0x4)
f.set_mask = ProtoField.bool("vfio_user.set_irqs.flags.action_mask", "ACTION_MASK", 32, nil, 0x8)
f.set_unmask = ProtoField.bool("vfio_user.set_irqs.flags.action_unmask", "ACTION_UNMASK", 32, nil, 0x10)
f.set_trigger = ProtoField.bool("vfio_user.set_irqs.flags.action_trigger", "ACTION_TRIGGER", 32, nil, 0x20)

-- REGION_READ/WRITE, DMA_READ/WRITE, REGION_WRITE_MULTI
f.acc_offset = ProtoField.uint64("vfio_user.region.offset", "Offset", base.HEX)
f.acc_count = ProtoField.uint32("vfio_user.region.count", "Count")
f.dma_addr = ProtoField.uint64("vfio_user.dma.addr", "Address", base.HEX)
f.dma_count = ProtoField.uint64("vfio_user.dma.count", "Count")
f.wr_cnt = ProtoField.uint64("vfio_user.write_multi.wr_cnt", "Writes")

-- DEVICE_FEATURE
f.feat_flags = ProtoField.uint32("vfio_user.feature.flags", "Flags", base.HEX)
f.feat_id = ProtoField.uint32("vfio_user.feature.id", "Feature", base.DEC, FEATURES, 0x0000ffff)
f.feat_get = ProtoField.bool("vfio_user.feature.get", "GET", 32, nil, 0x00010000)
f.feat_set = ProtoField.bool("vfio_user.feature.set", "SET", 32, nil, 0x00020000)
f.feat_probe = ProtoField.bool("vfio_user.feature.probe", "PROBE", 32, nil, 0x00040000)
f.feat_name = ProtoField.string("vfio_user.feature.name", "Feature name")
f.feat_ops = ProtoField.string("vfio_user.feature.ops", "Operations")
f.mig_flags = ProtoField.uint64("vfio_user.migration.flags", "Migration flags", base.HEX)
f.mig_stop_copy = ProtoField.bool("vfio_user.migration.stop_copy", "STOP_COPY")
f.mig_p2p = ProtoField.bool("vfio_user.migration.p2p", "P2P")
f.mig_pre_copy = ProtoField.bool("vfio_user.migration.pre_copy", "PRE_COPY")
f.state = ProtoField.uint32("vfio_user.mig.state", "Device state", base.DEC, STATES)
f.state_name = ProtoField.string("vfio_user.mig.state_name", "Device state name")
f.data_fd = ProtoField.uint32("vfio_user.mig.data_fd", "data_fd (unused)")
f.log_page_size = ProtoField.uint64("vfio_user.logging.page_size", "Page size")
f.log_num_ranges = ProtoField.uint32("vfio_user.logging.num_ranges", "Ranges (0: all)")
f.log_iova = ProtoField.uint64("vfio_user.logging.iova", "IOVA", base.HEX)
f.log_length = ProtoField.uint64("vfio_user.logging.length", "Length", base.HEX)
f.rep_iova = ProtoField.uint64("vfio_user.report.iova", "IOVA", base.HEX)
f.rep_length = ProtoField.uint64("vfio_user.report.length", "Length", base.HEX)
f.rep_page_size = ProtoField.uint64("vfio_user.report.page_size", "Page size")
f.rep_bitmap = ProtoField.bytes("vfio_user.report.bitmap", "Bitmap")
f.rep_dirty = ProtoField.uint32("vfio_user.report.dirty_pages", "Dirty pages reported")

-- MIG_DATA_READ/WRITE
f.mig_size = ProtoField.uint32("vfio_user.mig_data.size", "Size")

local plist = {}
for _, v in pairs(f) do
    plist[#plist + 1] = v
end
proto.fields = plist

local e_cut = ProtoExpert.new("vfio_user.cut", "The capture kept only the first bytes of this payload",
    expert.group.UNDECODED, expert.severity.NOTE)
local e_short = ProtoExpert.new("vfio_user.short", "Payload too short for its command",
    expert.group.MALFORMED, expert.severity.ERROR)
local e_error = ProtoExpert.new("vfio_user.error_reply", "Error reply",
    expert.group.RESPONSE_CODE, expert.severity.NOTE)
local e_magic = ProtoExpert.new("vfio_user.bad_magic", "Not a miglab vfio-user packet",
    expert.group.MALFORMED, expert.severity.ERROR)
proto.experts = { e_cut, e_short, e_error, e_magic }

-- A payload being read: fields are taken in order, as far as the capture has them.
local Reader = {}
Reader.__index = Reader

local function reader(tvb, tree, cut, info)
    return setmetatable({ tvb = tvb, tree = tree, off = 0, cut = cut, stopped = false, info = info }, Reader)
end

-- Whether n more bytes are here; otherwise the payload ended (or was cut) and that is said once.
function Reader:has(n)
    if self.stopped then return false end
    if self.off + n <= self.tvb:len() then return true end
    self.stopped = true
    if self.cut then
        self.tree:add_proto_expert_info(e_cut)
    else
        self.tree:add_proto_expert_info(e_short)
        self.info[#self.info + 1] = "(payload too short)"
    end
    return false
end

function Reader:rest()
    return self.tvb:len() - self.off
end

-- Adds field pf of n bytes (little-endian); returns its value (a number; UInt64 for 8 bytes).
function Reader:take(pf, n, tree)
    if not self:has(n) then return nil end
    local range = self.tvb(self.off, n)
    local item = (tree or self.tree):add_le(pf, range)
    self.off = self.off + n
    if n == 8 then return range:le_uint64(), item end
    return range:le_uint(), item
end

-- A flags word with its bits as subfields.
function Reader:flags(pf, bits, tree)
    if not self:has(4) then return nil end
    local range = self.tvb(self.off, 4)
    local item = (tree or self.tree):add_le(pf, range)
    for _, b in ipairs(bits) do
        item:add_le(b, range)
    end
    self.off = self.off + 4
    return range:le_uint()
end

-- The data at the end of the payload (`whole` bytes on the wire), as far as it was captured.
function Reader:data(pf, whole, tree)
    local have = math.max(self:rest(), 0)
    if whole ~= nil and whole >= 0 then
        (tree or self.tree):add(f.data_len, whole):set_generated()
    end
    if have > 0 then
        local item = (tree or self.tree):add(pf or f.data, self.tvb(self.off, have))
        if whole ~= nil and have < whole then
            item:append_text(string.format(" [%d of %d bytes captured]", have, whole))
        end
    end
    self.off = self.off + have
end

local function hex64(v)
    if v == nil then return "?" end
    return "0x" .. v:tohex():gsub("^0+(.)", "%1")
end

local function num(v)
    if v == nil then return "?" end
    if type(v) == "number" then return tostring(v) end
    return tostring(v:tonumber())
end

local function name_of(table, v, fallback)
    if v == nil then return "?" end
    return table[v] or string.format("%s%d", fallback or "", v)
end

local function region_name(index, tree)
    if index == nil then return "?" end
    local name = REGIONS[index] or tostring(index)
    tree:add(f.reg_name, name):set_generated()
    return name
end

-- Per-command payloads. Each gets the reader, whether the message is a reply, the whole
-- payload length, and an info table for the Info column.
local decode = {}

decode[1] = function(r, reply, whole, info)
    local major = r:take(f.major, 2)
    local minor = r:take(f.minor, 2)
    info[#info + 1] = string.format("%s.%s", num(major), num(minor))
    if r:rest() > 0 then
        -- NUL-terminated, unless the capture cut it first.
        local text = r.tvb(r.off, r:rest()):raw()
        local nul = text:find("\0", 1, true)
        if nul ~= nil then text = text:sub(1, nul - 1) end
        r.tree:add(f.json, r.tvb(r.off, r:rest()), text)
        info[#info + 1] = text
        r.off = r.tvb:len()
    end
end

decode[2] = function(r, reply, whole, info)
    if reply then return end
    r:take(f.argsz, 4)
    local flags = r:flags(f.dma_flags, { f.dma_read, f.dma_write })
    local offset = r:take(f.map_offset, 8)
    local addr = r:take(f.map_addr, 8)
    local size = r:take(f.map_size, 8)
    info[#info + 1] = string.format("addr=%s size=%s offset=%s", hex64(addr), hex64(size), hex64(offset))
end

decode[3] = function(r, reply, whole, info)
    r:take(f.argsz, 4)
    r:flags(f.unmap_flags, { f.unmap_dirty, f.unmap_all })
    local addr = r:take(f.map_addr, 8)
    local size = r:take(f.map_size, 8)
    info[#info + 1] = string.format("addr=%s size=%s", hex64(addr), hex64(size))
end

decode[4] = function(r, reply, whole, info)
    r:take(f.argsz, 4)
    local flags = r:flags(f.dev_flags, { f.dev_reset, f.dev_pci })
    local regions = r:take(f.num_regions, 4)
    local irqs = r:take(f.num_irqs, 4)
    if reply then
        info[#info + 1] = string.format("regions=%s irqs=%s", num(regions), num(irqs))
    end
end

decode[5] = function(r, reply, whole, info)
    r:take(f.argsz, 4)
    r:flags(f.reg_flags, { f.reg_read, f.reg_write, f.reg_mmap, f.reg_caps })
    local index = r:take(f.reg_index, 4)
    info[#info + 1] = "index=" .. region_name(index, r.tree)
    local cap_offset = r:take(f.cap_offset, 4)
    local size = r:take(f.reg_size, 8)
    r:take(f.reg_offset, 8)
    if not reply then return end
    info[#info + 1] = "size=" .. hex64(size)
    -- The capability chain, forward only.
    local at = cap_offset or 0
    local seen = 0
    while at >= 32 and at + 8 <= r.tvb:len() and seen < 16 do
        local cap = r.tree:add(proto, r.tvb(at, math.min(r.tvb:len() - at, 16)), "Capability")
        r.off = at
        local id = r:take(f.cap_id, 2, cap)
        r:take(f.cap_version, 2, cap)
        local nxt = r:take(f.cap_next, 4, cap)
        if id == 1 then
            local n = r:take(f.nr_areas, 4, cap) or 0
            r:take(f.reserved, 4, cap)
            for _ = 1, math.min(n, 64) do
                local a = cap:add(proto, r.tvb(r.off, math.min(16, math.max(r:rest(), 0))), "Sparse area")
                r:take(f.area_offset, 8, a)
                r:take(f.area_size, 8, a)
            end
        end
        seen = seen + 1
        if nxt == nil or nxt <= at then break end
        at = nxt
    end
    r.off = r.tvb:len()
end

decode[6] = function(r, reply, whole, info)
    r:take(f.argsz, 4)
    r:take(f.payload_flags, 4)
    local index = r:take(f.reg_index, 4)
    info[#info + 1] = "index=" .. region_name(index, r.tree)
    local count = r:take(f.io_count, 4)
    if not reply then return end
    info[#info + 1] = "count=" .. num(count)
    while r:rest() >= 40 do
        local e = r.tree:add(proto, r.tvb(r.off, 40), "Sub-region")
        r:take(f.io_offset, 8, e)
        r:take(f.io_size, 8, e)
        r:take(f.io_fd_index, 4, e)
        r:take(f.io_type, 4, e)
        r:take(f.io_flags, 4, e)
        r:take(f.reserved, 4, e)
        r:take(f.io_datamatch, 8, e)
    end
end

decode[7] = function(r, reply, whole, info)
    r:take(f.argsz, 4)
    r:flags(f.irq_flags, { f.irq_eventfd, f.irq_maskable, f.irq_automasked, f.irq_noresize })
    local index = r:take(f.irq_index, 4)
    local count = r:take(f.irq_count, 4)
    info[#info + 1] = "index=" .. name_of(IRQS, index)
    if reply then info[#info + 1] = "count=" .. num(count) end
end

decode[8] = function(r, reply, whole, info)
    if reply then return end
    r:take(f.argsz, 4)
    r:flags(f.set_flags, { f.set_none, f.set_bool, f.set_eventfd, f.set_mask, f.set_unmask, f.set_trigger })
    local index = r:take(f.irq_index, 4)
    local start = r:take(f.irq_start, 4)
    local count = r:take(f.irq_count, 4)
    info[#info + 1] = string.format("index=%s start=%s count=%s", name_of(IRQS, index), num(start), num(count))
    if r:rest() > 0 then r:data(f.data, whole - 20) end
end

local function region_access(r, reply, whole, info)
    local offset = r:take(f.acc_offset, 8)
    local index = r:take(f.reg_index, 4)
    local count = r:take(f.acc_count, 4)
    info[#info + 1] = string.format("region=%s offset=%s count=%s", region_name(index, r.tree), hex64(offset), num(count))
    if whole > 16 then r:data(f.data, whole - 16) end
end
decode[9] = region_access
decode[10] = region_access

local function dma_access(r, reply, whole, info)
    local addr = r:take(f.dma_addr, 8)
    local count = r:take(f.dma_count, 8)
    info[#info + 1] = string.format("addr=%s count=%s", hex64(addr), num(count))
    if whole > 16 then r:data(f.data, whole - 16) end
end
decode[11] = dma_access
decode[12] = dma_access

decode[13] = function() end

decode[15] = function(r, reply, whole, info)
    local n = r:take(f.wr_cnt, 8)
    info[#info + 1] = (reply and "completed=" or "writes=") .. num(n)
    if reply or n == nil then return end
    local shown = 0
    while r:rest() >= 24 and shown < 256 do
        local e = r.tree:add(proto, r.tvb(r.off, 24), "Write")
        r:take(f.acc_offset, 8, e)
        local index = r:take(f.reg_index, 4, e)
        region_name(index, e)
        r:take(f.acc_count, 4, e)
        e:add(f.data, r.tvb(r.off, 8))
        r.off = r.off + 8
        shown = shown + 1
    end
end

local function ops_of(flags)
    local ops = {}
    if has(flags, 0x10000) then ops[#ops + 1] = "GET" end
    if has(flags, 0x20000) then ops[#ops + 1] = "SET" end
    if has(flags, 0x40000) then ops[#ops + 1] = "PROBE" end
    if #ops == 0 then return "no-op" end
    return table.concat(ops, "|")
end

local function dirty_pages(tvb, off, len, pages)
    local count = 0
    local word = 0
    while off + 8 <= tvb:len() and word * 64 < pages do
        for byte = 0, 7 do
            local b = tvb(off + byte, 1):uint()
            for bit = 0, 7 do
                local page = word * 64 + byte * 8 + bit
                if page < pages and has(b, 2 ^ bit) then count = count + 1 end
            end
        end
        off = off + 8
        word = word + 1
    end
    return count
end

decode[16] = function(r, reply, whole, info)
    r:take(f.argsz, 4)
    if not r:has(4) then return end
    local range = r.tvb(r.off, 4)
    local flags = range:le_uint()
    local item = r.tree:add_le(f.feat_flags, range)
    item:add_le(f.feat_id, range)
    item:add_le(f.feat_get, range)
    item:add_le(f.feat_set, range)
    item:add_le(f.feat_probe, range)
    r.off = r.off + 4
    local id = flags % 0x10000
    local name = FEATURES[id] or ("feature#" .. id)
    local ops = ops_of(flags)
    r.tree:add(f.feat_name, name):set_generated()
    r.tree:add(f.feat_ops, ops):set_generated()
    info[#info + 1] = ops .. " " .. name
    if has(flags, 0x40000) then return end
    local get, set = has(flags, 0x10000), has(flags, 0x20000)
    if id == 1 and (reply or r:rest() >= 8) then
        local v = r:take(f.mig_flags, 8)
        if v ~= nil and reply then
            local low = v:tonumber() % 8
            r.tree:add(f.mig_stop_copy, has(low, 1)):set_generated()
            r.tree:add(f.mig_p2p, has(low, 2)):set_generated()
            r.tree:add(f.mig_pre_copy, has(low, 4)):set_generated()
            local names = {}
            if has(low, 1) then names[#names + 1] = "STOP_COPY" end
            if has(low, 2) then names[#names + 1] = "P2P" end
            if has(low, 4) then names[#names + 1] = "PRE_COPY" end
            info[#info + 1] = "flags=" .. table.concat(names, "|")
        end
    elseif id == 2 and (set or reply) then
        local state = r:take(f.state, 4)
        if state ~= nil then
            local sname = STATES[state] or ("state#" .. state)
            r.tree:add(f.state_name, sname):set_generated()
            info[#info + 1] = "state=" .. sname
        end
        r:take(f.data_fd, 4)
    elseif (id == 6 or id == 7) and r:rest() > 0 then
        local page = r:take(f.log_page_size, 8)
        local n = r:take(f.log_num_ranges, 4)
        r:take(f.reserved, 4)
        info[#info + 1] = "page_size=" .. num(page)
        if not reply and n ~= nil then
            info[#info + 1] = (n == 0) and "ranges=all" or ("ranges=" .. n)
            for _ = 1, math.min(n, 4096) do
                if not r:has(16) then break end
                local e = r.tree:add(proto, r.tvb(r.off, 16), "Range")
                r:take(f.log_iova, 8, e)
                r:take(f.log_length, 8, e)
            end
        end
    elseif id == 8 then
        local iova = r:take(f.rep_iova, 8)
        local length = r:take(f.rep_length, 8)
        local page = r:take(f.rep_page_size, 8)
        info[#info + 1] = string.format("iova=%s length=%s page_size=%s", hex64(iova), hex64(length), num(page))
        if reply and length ~= nil and page ~= nil and page:tonumber() > 0 then
            local pages = math.ceil(length:tonumber() / page:tonumber())
            local have = math.max(r:rest(), 0)
            if have > 0 then
                local item = r.tree:add(f.rep_bitmap, r.tvb(r.off, have))
                if have < whole - 32 then
                    item:append_text(string.format(" [%d of %d bytes captured]", have, whole - 32))
                end
            end
            local dirty = dirty_pages(r.tvb, r.off, have, pages)
            r.tree:add(f.rep_dirty, dirty):set_generated()
            info[#info + 1] = string.format("dirty=%s%d of %d pages", have < whole - 32 and "at least " or "", dirty, pages)
            r.off = r.tvb:len()
        end
    elseif r:rest() > 0 then
        r:data(f.data, whole - r.off)
    end
end

local function mig_data(r, reply, whole, info)
    r:take(f.argsz, 4)
    local size = r:take(f.mig_size, 4)
    info[#info + 1] = "size=" .. num(size)
    if whole > 8 then r:data(f.data, whole - 8) end
end
decode[17] = mig_data
decode[18] = mig_data

-- Requests and their replies, by session, the request's direction, msg_id and command.
local request_frame = {}
local reply_of = {}
local request_of = {}

function proto.init()
    request_frame = {}
    reply_of = {}
    request_of = {}
end

function proto.dissector(tvb, pinfo, tree)
    if tvb:len() < 16 + 16 then return 0 end
    if tvb(0, 4):string() ~= "vfuT" then
        tree:add_proto_expert_info(e_magic)
        return 0
    end
    pinfo.cols.protocol = "vfio-user"
    local dir = tvb(5, 1):uint()
    local nfds = tvb(6, 2):le_uint()
    local session_len = tvb(12, 2):le_uint()
    local cut = has(tvb(14, 2):le_uint(), 1)
    local whole_msg = tvb(8, 4):le_uint()
    local at = 16 + session_len
    if tvb:len() < at + 16 then return 0 end
    local session = tvb(16, session_len):string()

    local root = tree:add(proto, tvb(), "vfio-user")
    local cap = root:add(proto, tvb(0, at), "Capture header (miglab)")
    cap:add(f.magic, tvb(0, 4))
    cap:add(f.direction, tvb(5, 1))
    cap:add_le(f.nfds, tvb(6, 2))
    cap:add_le(f.whole, tvb(8, 4))
    cap:add_le(f.session_len, tvb(12, 2))
    cap:add_le(f.cut, tvb(14, 2))
    cap:add(f.session, tvb(16, session_len))

    local msg_id = tvb(at, 2):le_uint()
    local cmd = tvb(at + 2, 2):le_uint()
    local size = tvb(at + 4, 4):le_uint()
    local flags = tvb(at + 8, 4):le_uint()
    local error_no = tvb(at + 12, 4):le_uint()
    local reply = flags % 16 == 1
    local is_error = has(flags, 0x20)
    local cmd_name = COMMANDS[cmd] or ("UNKNOWN(" .. cmd .. ")")

    local head = root:add(proto, tvb(at, 16), "Header")
    head:add_le(f.msg_id, tvb(at, 2))
    head:add_le(f.cmd, tvb(at + 2, 2))
    root:add(f.cmd_name, cmd_name):set_generated()
    head:add_le(f.size, tvb(at + 4, 4))
    local fl = head:add_le(f.flags, tvb(at + 8, 4))
    fl:add_le(f.flags_type, tvb(at + 8, 4))
    fl:add_le(f.flags_no_reply, tvb(at + 8, 4))
    fl:add_le(f.flags_error, tvb(at + 8, 4))
    head:add_le(f.error_no, tvb(at + 12, 4))

    local info = {}
    local arrow = dir == 0 and "c2s" or "s2c"
    pinfo.cols.src = session .. (dir == 0 and " client" or " server")
    pinfo.cols.dst = session .. (dir == 0 and " server" or " client")
    local line = string.format("%s #%d %s", arrow, msg_id, cmd_name)
    if reply then line = line .. (is_error and " reply ERROR" or " reply ok") end

    -- Requests and replies: a request goes one way, its reply the other.
    local req_dir = reply and (1 - dir) or dir
    local key = session .. "/" .. req_dir .. "/" .. msg_id .. "/" .. cmd
    if not pinfo.visited then
        if reply then
            local req = request_frame[key]
            if req ~= nil then
                reply_of[req] = pinfo.number
                request_of[pinfo.number] = req
                request_frame[key] = nil
            end
        else
            request_frame[key] = pinfo.number
        end
    end
    if reply and request_of[pinfo.number] then
        root:add(f.request_in, request_of[pinfo.number]):set_generated()
    elseif not reply and reply_of[pinfo.number] then
        root:add(f.response_in, reply_of[pinfo.number]):set_generated()
    end

    local payload = tvb(at + 16, tvb:len() - at - 16 > 0 and tvb:len() - at - 16 or 0)
    local payload_tvb = tvb:range(at + 16):tvb()
    local whole = whole_msg - 16
    local body = root:add(proto, payload, "Payload")
    if cut then
        body:append_text(string.format(" [%d of %d bytes captured]", tvb:len() - at - 16, whole))
    end
    if is_error then
        local name = ERRNOS[error_no] or ("errno " .. error_no)
        root:add(f.errno_name, name):set_generated()
        root:add_proto_expert_info(e_error, "Error reply: " .. name)
        info[#info + 1] = string.format("%s (%d)", name, error_no)
        if whole > 0 then
            reader(payload_tvb, body, cut, info):data(f.data, whole)
        end
    elseif whole > 0 or cmd == 13 then
        local r = reader(payload_tvb, body, cut, info)
        local fn = decode[cmd]
        if fn ~= nil then
            fn(r, reply, whole, info)
        else
            r:data(f.data, whole)
        end
    end
    if nfds > 0 then info[#info + 1] = "fds=" .. nfds end
    if has(flags, 0x10) then info[#info + 1] = "no-reply" end
    if #info > 0 then line = line .. " " .. table.concat(info, " ") end
    pinfo.cols.info = line
    return tvb:len()
end

local encap = (wtap_encaps and wtap_encaps.USER0) or (wtap and wtap.USER0) or 45
DissectorTable.get("wtap_encap"):add(encap, proto)
