// Loads the wasm module and starts the viewer on the canvas; without WebGPU says so.
import init, { start } from './lowbit.js';

const status = document.getElementById('status');
if (!navigator.gpu) {
  status.textContent = 'This browser has no WebGPU (navigator.gpu): the viewer needs it. ' +
    'Try a recent Chrome or Edge, or Firefox/Safari with WebGPU enabled.';
  document.getElementById('result').textContent = JSON.stringify({ error: 'no WebGPU in this browser' });
} else {
  await init();
  status.textContent = '';
  // start() writes its own errors into #status and #result.
  await start('viewer').catch((e) => console.error(e));
}
