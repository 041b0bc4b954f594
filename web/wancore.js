// ComfyUI front-end extension of ComfyUI-WanCore: keeps the sampler's size widgets honest (see size_widgets.js).
import { app } from "../../scripts/app.js";
import { syncSizeWidgets } from "./size_widgets.js";

function after(prototype, method) {
  const original = prototype[method];
  prototype[method] = function (...args) {
    const result = original?.apply(this, args);
    syncSizeWidgets(this);
    return result;
  };
}

app.registerExtension({
  name: "WanCore.SamplerSize",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "WanCoreSampler") return;
    after(nodeType.prototype, "onConnectionsChange"); // a link made or removed
    after(nodeType.prototype, "onConfigure"); // a workflow loaded or pasted
  },
});
