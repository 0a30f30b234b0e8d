"""Ray recipes: each module composes actprm components into one end-to-end job."""
