import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createLogger, defineConfig } from "vite";

const swPath = fileURLToPath(new URL("./node_modules/hydrogen-view-sdk/lib-build/sw.js", import.meta.url));

// Hydrogen registers its service worker from the root of the app (assetPaths.serviceWorker =
// "sw.js"); the SDK README symlinks it into publicDir, this plugin emits it instead so the
// repo holds no symlink.
function hydrogenServiceWorker() {
    return {
        name: "hydrogen-service-worker",
        generateBundle() {
            this.emitFile({ type: "asset", fileName: "sw.js", source: readFileSync(swPath) });
        },
    };
}

// libolm's olm.js is imported with `?url` and copied into dist/ byte for byte, but Vite's resolver
// still looks at its Node-only `require("fs" / "path" / "crypto")` branches and warns that they
// were "externalized for browser compatibility". The browser never takes those branches: drop
// just that warning so real ones stand out.
const logger = createLogger();
const warn = logger.warn.bind(logger);
logger.warn = (msg, options) => {
    if (msg.includes("has been externalized for browser compatibility") && msg.includes("@matrix-org/olm/olm.js")) {
        return;
    }
    warn(msg, options);
};

export default defineConfig({
    customLogger: logger,
    // Relative asset URLs: dist/ works from any path of whatever server serves it.
    base: "./",
    publicDir: false,
    plugins: [hydrogenServiceWorker()],
    build: {
        outDir: "dist",
        emptyOutDir: true,
        // Hydrogen's bundle is large; the warning is noise here.
        chunkSizeWarningLimit: 4096,
        // Keep olm.wasm and friends as files (never inlined as data: URLs).
        assetsInlineLimit: 0,
    },
});
