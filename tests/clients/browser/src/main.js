// The full Hydrogen web client (login screen, session/room list, room view with composer)
// assembled from hydrogen-view-sdk the same way hydrogen-web's own entry point does it:
// Platform + RootViewModel + RootView. Nothing here is test-specific except that the
// default homeserver can be preset with `?hs=<url>` (the test still types it in the form)
// and `?e2ee=0` leaves libolm out.
import {
    Platform,
    RootViewModel,
    FeatureSet,
    createNavigation,
    createRouter,
} from "hydrogen-view-sdk";
// Assets that Hydrogen loads at run time by URL: the download sandbox iframe, the olm
// worker (legacy, for browsers without WebAssembly), libolm for end-to-end encryption,
// and the service worker (authenticated media). `?url` makes Vite emit them as files.
import downloadSandboxPath from "hydrogen-view-sdk/download-sandbox.html?url";
import workerPath from "hydrogen-view-sdk/main.js?url";
import olmWasmPath from "@matrix-org/olm/olm.wasm?url";
import olmJsPath from "@matrix-org/olm/olm.js?url";
import olmLegacyJsPath from "@matrix-org/olm/olm_legacy.js?url";
import "hydrogen-view-sdk/assets/theme-element-light.css";

const params = new URLSearchParams(window.location.search);

const assetPaths = {
    downloadSandbox: downloadSandboxPath,
    worker: workerPath,
    olm: {
        wasm: olmWasmPath,
        legacyBundle: olmLegacyJsPath,
        wasmBundle: olmJsPath,
    },
    // Emitted at the root of dist/ by vite.config.js.
    serviceWorker: "sw.js",
};
// `?e2ee=0` starts Hydrogen without libolm: it then runs as a client without end-to-end
// encryption (no device keys, no /keys/* requests), for servers or scenarios without E2EE.
if (params.get("e2ee") === "0") {
    delete assetPaths.olm;
}

async function main() {
    const container = document.getElementById("app");
    const config = {
        defaultHomeServer: params.get("hs") || "",
    };
    const platform = new Platform({
        container,
        assetPaths,
        config,
        // Development mode adds a console reporter: the test runner collects the browser
        // console, so Hydrogen's own log ends up in the failure report.
        options: { development: true },
    });
    await platform.init();
    const features = await FeatureSet.load(platform.settingsStorage);
    const navigation = createNavigation();
    platform.setNavigation(navigation);
    const urlRouter = createRouter({ navigation, history: platform.history });
    urlRouter.attach();
    const vm = new RootViewModel({ platform, urlRouter, navigation, features });
    await vm.load();
    platform.createAndMountRootView(vm);
    // A hook for the test runner: lets it wait for the app to be mounted and read state
    // (e.g. whether olm loaded) without depending on Hydrogen internals.
    window.__mossTest = { platform, navigation, vm, mounted: true };
}

main().catch((err) => {
    console.error(`hydrogen failed to start: ${err.message}\n${err.stack}`);
    window.__mossTest = { error: String(err && err.stack || err) };
});
