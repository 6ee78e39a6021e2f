"""Natural-language instructions for the 50 Meta-World v3 tasks (none ship with Meta-World).

Every task has several phrasings; `instruction_for(task, seed)` picks one per episode from the reset seed, so
the same seed always gives the same sentence.
"""

from __future__ import annotations

import numpy as np

INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "assembly-v3": (
        "Pick up the nut and place it onto the peg.",
        "Grasp the ring by its handle and slide it down over the peg.",
        "Assemble the nut onto the peg.",
    ),
    "basketball-v3": (
        "Pick up the basketball and dunk it into the hoop.",
        "Grasp the ball and put it through the basket.",
        "Score a basket with the ball.",
    ),
    "bin-picking-v3": (
        "Pick up the cube and place it into the other bin.",
        "Move the block from one bin to the target bin.",
        "Grasp the cube and drop it in the second bin.",
    ),
    "box-close-v3": (
        "Pick up the lid and close the box with it.",
        "Grasp the box lid and put it on top of the box.",
        "Close the box by placing its lid on it.",
    ),
    "button-press-topdown-v3": (
        "Press the button from the top.",
        "Push the button down from above.",
        "Press down on the red button.",
    ),
    "button-press-topdown-wall-v3": (
        "Press the button from the top, reaching past the wall.",
        "Push the button down from above; mind the wall.",
        "Press down on the button behind the short wall.",
    ),
    "button-press-v3": (
        "Press the button on the front of the box.",
        "Push the button forward.",
        "Press the red button horizontally.",
    ),
    "button-press-wall-v3": (
        "Press the button behind the wall.",
        "Reach around the wall and push the button.",
        "Push the button that is blocked by a wall.",
    ),
    "coffee-button-v3": (
        "Press the button on the coffee machine.",
        "Push the coffee machine's button.",
        "Start the coffee machine by pressing its button.",
    ),
    "coffee-pull-v3": (
        "Pull the mug out from under the coffee machine.",
        "Grasp the mug and pull it away from the coffee machine.",
        "Take the coffee mug out of the machine.",
    ),
    "coffee-push-v3": (
        "Push the mug under the coffee machine.",
        "Grasp the mug and move it beneath the coffee spout.",
        "Place the coffee mug under the machine.",
    ),
    "dial-turn-v3": (
        "Turn the dial.",
        "Rotate the dial a quarter turn.",
        "Twist the knob on the dial.",
    ),
    "disassemble-v3": (
        "Pick the nut up and take it off the peg.",
        "Remove the ring from the peg.",
        "Lift the nut off the peg.",
    ),
    "door-close-v3": (
        "Close the door.",
        "Push the open door shut.",
        "Swing the door closed.",
    ),
    "door-lock-v3": (
        "Lock the door by turning the lock.",
        "Turn the door lock down to lock it.",
        "Lock the door.",
    ),
    "door-open-v3": (
        "Open the door.",
        "Pull the door open by its handle.",
        "Swing the door open.",
    ),
    "door-unlock-v3": (
        "Unlock the door by turning the lock.",
        "Turn the door lock to unlock it.",
        "Unlock the door.",
    ),
    "drawer-close-v3": (
        "Close the drawer.",
        "Push the drawer shut.",
        "Slide the open drawer closed.",
    ),
    "drawer-open-v3": (
        "Open the drawer.",
        "Pull the drawer open by its handle.",
        "Slide the drawer out.",
    ),
    "faucet-close-v3": (
        "Turn the faucet off.",
        "Rotate the faucet handle to close it.",
        "Close the faucet.",
    ),
    "faucet-open-v3": (
        "Turn the faucet on.",
        "Rotate the faucet handle to open it.",
        "Open the faucet.",
    ),
    "hammer-v3": (
        "Pick up the hammer and hammer the nail in.",
        "Grasp the hammer and drive the nail into the wall.",
        "Use the hammer to hit the nail.",
    ),
    "hand-insert-v3": (
        "Insert the puck into the hole.",
        "Grasp the puck and put it into the hole in the table.",
        "Place the puck in the hole.",
    ),
    "handle-press-side-v3": (
        "Press the handle down from the side.",
        "Push the side handle down.",
        "Press down on the handle from the side.",
    ),
    "handle-press-v3": (
        "Press the handle down.",
        "Push the handle all the way down.",
        "Press down on the handle.",
    ),
    "handle-pull-side-v3": (
        "Pull the handle up from the side.",
        "Lift the side handle up.",
        "Pull up on the handle from the side.",
    ),
    "handle-pull-v3": (
        "Pull the handle up.",
        "Lift the handle all the way up.",
        "Pull up on the handle.",
    ),
    "lever-pull-v3": (
        "Pull the lever up.",
        "Lift the lever.",
        "Rotate the lever upwards.",
    ),
    "peg-insert-side-v3": (
        "Insert the peg into the hole from the side.",
        "Pick up the peg and push it sideways into the hole.",
        "Put the peg in the hole in the box.",
    ),
    "peg-unplug-side-v3": (
        "Unplug the peg from the side.",
        "Pull the peg out of the hole sideways.",
        "Remove the peg from the box.",
    ),
    "pick-out-of-hole-v3": (
        "Pick the puck out of the hole.",
        "Lift the puck up out of the hole.",
        "Take the puck out of the hole and raise it.",
    ),
    "pick-place-v3": (
        "Pick up the puck and place it at the goal.",
        "Grasp the puck and put it at the target position.",
        "Move the puck to the goal by picking it up.",
    ),
    "pick-place-wall-v3": (
        "Pick up the puck and place it at the goal behind the wall.",
        "Lift the puck over the wall and put it at the target.",
        "Grasp the puck and carry it over the wall to the goal.",
    ),
    "plate-slide-back-side-v3": (
        "Slide the plate back sideways out of the goal.",
        "Push the plate sideways back out of the cabinet.",
        "Slide the plate out of the goal from the side.",
    ),
    "plate-slide-back-v3": (
        "Slide the plate back out of the goal.",
        "Pull the plate back out of the cabinet.",
        "Slide the plate back towards the robot.",
    ),
    "plate-slide-side-v3": (
        "Slide the plate sideways into the goal.",
        "Push the plate sideways into the cabinet.",
        "Slide the plate into the goal from the side.",
    ),
    "plate-slide-v3": (
        "Slide the plate into the goal.",
        "Push the plate into the cabinet.",
        "Slide the plate forward into the goal.",
    ),
    "push-back-v3": (
        "Push the puck back to the goal.",
        "Move the puck backwards to the target.",
        "Pull the puck back to the goal position.",
    ),
    "push-v3": (
        "Push the puck to the goal.",
        "Slide the puck to the target position.",
        "Push the puck onto the goal.",
    ),
    "push-wall-v3": (
        "Push the puck around the wall to the goal.",
        "Slide the puck past the wall to the target.",
        "Bypass the wall and push the puck to the goal.",
    ),
    "reach-v3": (
        "Reach the goal position.",
        "Move the gripper to the target.",
        "Reach for the goal.",
    ),
    "reach-wall-v3": (
        "Reach the goal behind the wall.",
        "Move the gripper over the wall to the target.",
        "Reach past the wall to the goal.",
    ),
    "shelf-place-v3": (
        "Pick up the block and place it on the shelf.",
        "Grasp the cube and put it on the shelf.",
        "Place the block onto the shelf.",
    ),
    "soccer-v3": (
        "Kick the ball into the goal.",
        "Push the soccer ball into the net.",
        "Score a goal with the ball.",
    ),
    "stick-pull-v3": (
        "Grasp the stick and pull the thermos with it.",
        "Use the stick to pull the thermos to the goal.",
        "Pick up the stick and drag the thermos back.",
    ),
    "stick-push-v3": (
        "Grasp the stick and push the thermos with it.",
        "Use the stick to push the thermos to the goal.",
        "Pick up the stick and shove the thermos forward.",
    ),
    "sweep-into-v3": (
        "Sweep the cube into the hole.",
        "Push the block into the hole in the table.",
        "Move the cube into the goal hole.",
    ),
    "sweep-v3": (
        "Sweep the cube off the table.",
        "Push the block off the edge of the table.",
        "Sweep the cube to the side off the table.",
    ),
    "window-close-v3": (
        "Close the window.",
        "Slide the window shut.",
        "Push the window closed.",
    ),
    "window-open-v3": (
        "Open the window.",
        "Slide the window open.",
        "Push the window open sideways.",
    ),
}


def instruction_for(task_name: str, seed: int | None = None) -> str:
    """One phrasing of `task_name`'s instruction, chosen reproducibly from `seed` (the first when None)."""
    if task_name not in INSTRUCTIONS:
        raise KeyError(f"no instruction for task {task_name!r}; known tasks: {sorted(INSTRUCTIONS)}")
    options = INSTRUCTIONS[task_name]
    if seed is None:
        return options[0]
    # A separate stream from the reset seed so the phrase is not correlated with anything else drawn from it.
    return options[int(np.random.default_rng([int(seed), 7919]).integers(len(options)))]
