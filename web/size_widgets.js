// Which size the WanCore Sampler renders, shown on the node: while image conditioning, VACE conditioning or a
// start latent is connected, that input sets width, height and frames, so the sampler's own widgets are greyed
// out and say where the size comes from. Plain functions of a LiteGraph node (tested with node.js).

export const SIZE_WIDGETS = ["width", "height", "frames"];
export const SIZE_SOURCES = ["latent", "vace", "image_embeds"]; // the engine's order (RenderJob.size_source)

/** The connected input that sets the render's size, or null when the sampler's widgets do. */
export function sizeSource(node) {
  const linked = new Set((node.inputs ?? []).filter((i) => i.link != null).map((i) => i.name));
  return SIZE_SOURCES.find((name) => linked.has(name)) ?? null;
}

/** Grey out and relabel the size widgets while a size source is connected; restore them otherwise. */
export function syncSizeWidgets(node) {
  const source = sizeSource(node);
  for (const widget of node.widgets ?? []) {
    if (!SIZE_WIDGETS.includes(widget.name)) continue;
    widget.disabled = source !== null;
    widget.label = source === null ? undefined : `${widget.name} (from ${source})`;
  }
  node.setDirtyCanvas?.(true, true);
  return source;
}
