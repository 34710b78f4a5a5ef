-- ngx.dynamic: runtime access to nginx upstream zones.
--
-- This file is compiled into ngx_http_lua_dynamic_upstream_module.so and served by
-- `require "ngx.dynamic"`; it is not installed on disk. It only checks arguments, calls the
-- module's functions through LuaJIT's FFI and turns their records into Lua tables. The module
-- takes nginx's locks itself; nothing here runs while a lock is held.

local ffi = require "ffi"

local C = ffi.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local error = error
local type = type
local tonumber = tonumber
local tostring = tostring
local pairs = pairs
local ipairs = ipairs
local select = select
local get_phase = ngx.get_phase

local _, new_tab = pcall(require, "table.new")
if type(new_tab) ~= "function" then
    new_tab = function() return {} end
end

-- A peer table is made by copying a template that already has every key: three times faster
-- than inserting the keys one by one (OpenResty's LuaJIT has table.clone).
local PEER_TEMPLATE = {
    name = "", server = "", weight = 0, current_weight = 0, effective_weight = 0,
    max_fails = 0, fail_timeout = 0, fails = 0, max_conns = 0, conns = 0,
    accessed = 0, checked = 0,
}
local _, clone = pcall(require, "table.clone")
if type(clone) ~= "function" then
    clone = function() return new_tab(0, 14) end
end

ffi.cdef [[
typedef struct {
    uint32_t off, len;
} ngx_dynamic_upstream_str_t;

typedef struct {
    ngx_dynamic_upstream_str_t name, zone;
} ngx_dynamic_upstream_upstream_t;

typedef struct {
    ngx_dynamic_upstream_str_t name, server;
    double weight, current_weight, effective_weight, max_fails, fail_timeout,
           fails, max_conns, conns, accessed, checked;
    uint8_t down, backup;
} ngx_dynamic_upstream_peer_t;

typedef struct {
    double weight, max_fails, fail_timeout, max_conns;
    uint8_t has_weight, has_max_fails, has_fail_timeout, has_max_conns;
    uint8_t has_down, down, has_backup, backup;
} ngx_dynamic_upstream_options_t;

int ngx_dynamic_upstream_ffi_add_peer(const char *target, size_t target_len,
    const char *server, size_t server_len, const ngx_dynamic_upstream_options_t *options,
    unsigned char *err, size_t *err_len);

int ngx_dynamic_upstream_ffi_remove_peer(const char *target, size_t target_len,
    const char *server, size_t server_len, unsigned char *err, size_t *err_len);

int ngx_dynamic_upstream_ffi_update_peer(const char *target, size_t target_len,
    const char *server, size_t server_len, const ngx_dynamic_upstream_options_t *options,
    unsigned char *err, size_t *err_len);

int ngx_dynamic_upstream_ffi_zone_usage(const char *target, size_t target_len,
    size_t *size, size_t *free, unsigned char *err, size_t *err_len);

int ngx_dynamic_upstream_ffi_list(ngx_dynamic_upstream_upstream_t *items, size_t *n,
    unsigned char *bytes, size_t *bytes_len, unsigned char *err, size_t *err_len);

int ngx_dynamic_upstream_ffi_describe(const char *target, size_t target_len,
    ngx_dynamic_upstream_peer_t *items, size_t *n,
    unsigned char *bytes, size_t *bytes_len, unsigned char *err, size_t *err_len);
]]

local NGX_OK = 0
local NGX_DECLINED = -5

local ERR_CAP = 512
local err_buf = ffi_new("unsigned char[?]", ERR_CAP)
local err_len = ffi_new("size_t[1]")
local n_inout = ffi_new("size_t[1]")
local bytes_inout = ffi_new("size_t[1]")

-- Result buffers, per record type, kept between calls and grown when the module reports that an
-- answer needs more room (one Lua VM per worker, and calls never yield: sharing them is safe).
local buffers = {
    upstream = { ctype = "ngx_dynamic_upstream_upstream_t[?]", cap = 0, bytes_cap = 0 },
    peer = { ctype = "ngx_dynamic_upstream_peer_t[?]", cap = 0, bytes_cap = 0 },
}

local function grow(buf, items, bytes)
    if items > buf.cap then
        buf.cap = items + items / 4 + 16
        buf.items = ffi_new(buf.ctype, buf.cap)
    end
    if bytes > buf.bytes_cap then
        buf.bytes_cap = bytes + bytes / 4 + 1024
        buf.bytes = ffi_new("unsigned char[?]", buf.bytes_cap)
    end
end

-- Calls `fn(..., items, n, bytes, bytes_len, err, err_len)` until the answer fits.
-- Returns the record count, or nil and the error text.
local function fetch(buf, fn, a, b)
    while true do
        n_inout[0] = buf.cap
        bytes_inout[0] = buf.bytes_cap
        err_len[0] = ERR_CAP
        local rc
        if a then
            rc = fn(a, b, buf.items, n_inout, buf.bytes, bytes_inout, err_buf, err_len)
        else
            rc = fn(buf.items, n_inout, buf.bytes, bytes_inout, err_buf, err_len)
        end
        if rc == NGX_OK then
            return tonumber(n_inout[0])
        end
        if rc ~= NGX_DECLINED then
            return nil, ffi_string(err_buf, err_len[0])
        end
        grow(buf, tonumber(n_inout[0]), tonumber(bytes_inout[0]))
    end
end

local function str(bytes, s)
    return ffi_string(bytes + s.off, s.len)
end

local function check_string(fname, pos, v)
    if type(v) ~= "string" then
        error("bad argument #" .. pos .. " to '" .. fname .. "' (string expected, got "
              .. type(v) .. ")", 3)
    end
end

-- The zones are created when the workers start; init_by_lua runs before that, in the master.
local function not_in_init(fname)
    if get_phase() == "init" then
        return fname .. " is not available in init_by_lua: upstream zones are set up "
               .. "when the workers start (use init_worker_by_lua)"
    end
end

-- Option names and their Lua types, per function.
local ADD_OPTIONS = { weight = "number", max_fails = "number", fail_timeout = "number",
                      max_conns = "number", down = "boolean", backup = "boolean" }
local UPDATE_OPTIONS = { weight = "number", max_fails = "number", fail_timeout = "number",
                         max_conns = "number", down = "boolean" }

local options = ffi_new("ngx_dynamic_upstream_options_t")
local size_out = ffi_new("size_t[1]")
local free_out = ffi_new("size_t[1]")

-- Fills the options record from a table, or returns an error text for an unknown option.
-- A value of the wrong type is an argument error.
local function fill_options(fname, pos, opts, allowed)
    for k, v in pairs(opts) do
        local want = allowed[k]
        if not want then
            local name = tostring(k)
            if #name > 128 then
                name = name:sub(1, 128) .. "..."
            end
            return "unknown option \"" .. name .. "\""
        end
        if type(v) ~= want then
            error("bad argument #" .. pos .. " to '" .. fname .. "' (option \"" .. k .. "\" must be a "
                  .. want .. ", got " .. type(v) .. ")", 3)
        end
    end
    local weight, max_fails, fail_timeout, max_conns, down, backup =
        opts.weight, opts.max_fails, opts.fail_timeout, opts.max_conns, opts.down, opts.backup
    options.has_weight = weight ~= nil and 1 or 0
    options.weight = weight or 0
    options.has_max_fails = max_fails ~= nil and 1 or 0
    options.max_fails = max_fails or 0
    options.has_fail_timeout = fail_timeout ~= nil and 1 or 0
    options.fail_timeout = fail_timeout or 0
    options.has_max_conns = max_conns ~= nil and 1 or 0
    options.max_conns = max_conns or 0
    options.has_down = down ~= nil and 1 or 0
    options.down = down and 1 or 0
    options.has_backup = backup ~= nil and 1 or 0
    options.backup = backup and 1 or 0
end

local function changed(rc)
    if rc == NGX_OK then
        return true
    end
    return nil, ffi_string(err_buf, err_len[0])
end

local _M = { version = "0.1.0" }

-- add_peer(target, server, opts?) or the original positional form
-- add_peer(target, server, weight, max_fails, fail_timeout, down).
function _M.add_peer(target, server, opts, ...)
    check_string("add_peer", 1, target)
    check_string("add_peer", 2, server)
    if type(opts) == "table" and select("#", ...) > 0 then
        error("bad argument #4 to 'add_peer' (no value expected after the options table)", 2)
    end
    if type(opts) ~= "table" and (opts ~= nil or select("#", ...) > 0) then
        -- The positional form: each argument checked for its own type.
        local max_fails, fail_timeout, down = ...
        local positional = { weight = opts, max_fails = max_fails,
                             fail_timeout = fail_timeout, down = down }
        local names = { "weight", "max_fails", "fail_timeout", "down" }
        for i, k in ipairs(names) do
            local v, want = positional[k], ADD_OPTIONS[k]
            if v ~= nil and type(v) ~= want then
                error("bad argument #" .. (i + 2) .. " to 'add_peer' (" .. want
                      .. " expected, got " .. type(v) .. ")", 2)
            end
        end
        opts = positional
    end
    local err = not_in_init("add_peer")
    if err then
        return nil, err
    end
    err = fill_options("add_peer", 3, opts or {}, ADD_OPTIONS)
    if err then
        return nil, err
    end
    err_len[0] = ERR_CAP
    return changed(C.ngx_dynamic_upstream_ffi_add_peer(target, #target, server, #server,
                                                       options, err_buf, err_len))
end

function _M.remove_peer(target, server)
    check_string("remove_peer", 1, target)
    check_string("remove_peer", 2, server)
    local err = not_in_init("remove_peer")
    if err then
        return nil, err
    end
    err_len[0] = ERR_CAP
    return changed(C.ngx_dynamic_upstream_ffi_remove_peer(target, #target, server, #server,
                                                          err_buf, err_len))
end

function _M.set_peer_down(target, server, down)
    check_string("set_peer_down", 1, target)
    check_string("set_peer_down", 2, server)
    if down ~= nil and type(down) ~= "boolean" then
        error("bad argument #3 to 'set_peer_down' (boolean expected, got " .. type(down)
              .. ")", 2)
    end
    local err = not_in_init("set_peer_down")
    if err then
        return nil, err
    end
    -- Only `down` given: the record is filled directly, without a table to check.
    options.has_weight, options.has_max_fails, options.has_fail_timeout = 0, 0, 0
    options.has_max_conns, options.has_backup, options.has_down = 0, 0, 1
    options.down = down == false and 0 or 1
    err_len[0] = ERR_CAP
    return changed(C.ngx_dynamic_upstream_ffi_update_peer(target, #target, server, #server,
                                                          options, err_buf, err_len))
end

function _M.update_peer(target, server, opts)
    check_string("update_peer", 1, target)
    check_string("update_peer", 2, server)
    if type(opts) ~= "table" then
        error("bad argument #3 to 'update_peer' (table expected, got " .. type(opts) .. ")", 2)
    end
    local err = not_in_init("update_peer")
    if err then
        return nil, err
    end
    err = fill_options("update_peer", 3, opts, UPDATE_OPTIONS)
    if err then
        return nil, err
    end
    err_len[0] = ERR_CAP
    return changed(C.ngx_dynamic_upstream_ffi_update_peer(target, #target, server, #server,
                                                          options, err_buf, err_len))
end

-- { size = bytes, free = bytes } of the zone that holds an upstream's peers.
function _M.zone_usage(target)
    check_string("zone_usage", 1, target)
    local err = not_in_init("zone_usage")
    if err then
        return nil, err
    end
    err_len[0] = ERR_CAP
    local rc = C.ngx_dynamic_upstream_ffi_zone_usage(target, #target, size_out, free_out,
                                                     err_buf, err_len)
    if rc ~= NGX_OK then
        return nil, ffi_string(err_buf, err_len[0])
    end
    return { size = tonumber(size_out[0]), free = tonumber(free_out[0]) }
end

function _M.list_upstreams()
    local err = not_in_init("list_upstreams")
    if err then
        return nil, err
    end
    local buf = buffers.upstream
    local n, ferr = fetch(buf, C.ngx_dynamic_upstream_ffi_list)
    if not n then
        return nil, ferr
    end
    local items, bytes = buf.items, buf.bytes
    local list = new_tab(n, 0)
    for i = 0, n - 1 do
        local u = items[i]
        list[i + 1] = { name = str(bytes, u.name), zone = str(bytes, u.zone) }
    end
    return list
end

function _M.list_zones()
    local err = not_in_init("list_zones")
    if err then
        return nil, err
    end
    local buf = buffers.upstream
    local n, ferr = fetch(buf, C.ngx_dynamic_upstream_ffi_list)
    if not n then
        return nil, ferr
    end
    local items, bytes = buf.items, buf.bytes
    local zones, seen = new_tab(n, 0), {}
    for i = 0, n - 1 do
        local zone = str(bytes, items[i].zone)
        if not seen[zone] then
            seen[zone] = true
            zones[#zones + 1] = zone
        end
    end
    return zones
end

function _M.describe_zone(target)
    check_string("describe_zone", 1, target)
    local err = not_in_init("describe_zone")
    if err then
        return nil, err
    end
    local buf = buffers.peer
    local n, ferr = fetch(buf, C.ngx_dynamic_upstream_ffi_describe, target, #target)
    if not n then
        return nil, ferr
    end
    local items, bytes = buf.items, buf.bytes
    local peers = new_tab(n, 0)
    for i = 0, n - 1 do
        local p = items[i]
        local peer = clone(PEER_TEMPLATE)
        local name = str(bytes, p.name)
        peer.name = name
        if p.server.off == p.name.off then
            peer.server = name
        else
            peer.server = str(bytes, p.server)
        end
        peer.weight = p.weight
        peer.current_weight = p.current_weight
        peer.effective_weight = p.effective_weight
        peer.max_fails = p.max_fails
        peer.fail_timeout = p.fail_timeout
        peer.fails = p.fails
        peer.max_conns = p.max_conns
        peer.conns = p.conns
        peer.accessed = p.accessed
        peer.checked = p.checked
        if p.down ~= 0 then
            peer.down = true
        end
        if p.backup ~= 0 then
            peer.backup = true
        end
        peers[i + 1] = peer
    end
    return peers
end

return _M
