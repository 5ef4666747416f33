"""The shapes world's vocabulary, as the contract (SHAPES_WORLD.md) lists it: shapes, colours, sizes, places.

Both halves of the world use it: `world.py` draws scenes from it and `world_text.py` talks about them. It lives
apart so that neither half has to import the other to get it.
"""

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 220),
          "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 30)}
SIZES = {"small": (0.14, 0.18), "large": (0.24, 0.28)}  # bounding-box side as a fraction of S
POSITIONS = {(0, 0): "top left", (0, 1): "top", (0, 2): "top right", (1, 0): "left", (1, 1): "center",
             (1, 2): "right", (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right"}
