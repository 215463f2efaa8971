"""Library halves of the tools: plan, bench, sweep, plot, inspect, btm, lora_merge."""
