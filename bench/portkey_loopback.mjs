// Preloaded (node --import) before Portkey's gateway: its start-server.js listens on every
// interface and has no host option, so bind whatever it listens on to 127.0.0.1 instead.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first !== null && typeof first === "object") {
    args[0] = { ...first, host: first.host ?? "127.0.0.1" };
  } else if (typeof first === "number" || typeof first === "string") {
    if (args[1] === undefined || typeof args[1] === "function") {
      if (args[1] === undefined) args[1] = "127.0.0.1";
      else args.splice(1, 0, "127.0.0.1");
    }
  }
  return listen.apply(this, args);
};
