"""Library halves of the tools commands (plan, bench, sweep, plot, inspect, btm, lora_merge)."""
