// The shader side of `Gpu::grid`: a 1-D range of work items laid over a 2-D grid of
// workgroups (the grid turns 2-D past 65535 workgroups per dimension). Included with
// `#include grid`; the includer declares `override WG` and skips items past its count.

// This workgroup's index in the flattened grid.
fn grid_group(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// This invocation's item: WG items per workgroup.
fn grid_item(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return grid_group(wg, nwg) * WG + lid;
}
