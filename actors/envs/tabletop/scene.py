"""MJCF scenes of the tabletop suite, built in code (no assets, no downloads).

One scene per task family: a table plane, a floating parallel gripper, the family's
coloured objects (free bodies) and receptacles (mocap bodies, placed per initial state).

Frame: the table top is z = 0; the agentview camera looks from +x towards -x, so +y is
the image's right and +x its bottom ("front"). The gripper has slide joints x, y, z, a
yaw hinge and two finger slides, each driven by a position actuator; its body origin is
the point between the fingertips (the end effector). Speed choices: 64x64 offscreen
buffer, no shadows, no multisampling, few geoms and triangles (the table plane is one
grid cell: a fine render grid costs more than everything else), 10 substeps of 5 ms per 20 Hz control step.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco

TIMESTEP = 0.005          # s of physics per mj_step
SUBSTEPS = 10             # mj_steps per control step: 20 Hz control
FINGER_OPEN = 0.04        # m from the centre line to each finger's inner face, fully open
CUBE_HALF = 0.02
CYLINDER_RADIUS, CYLINDER_HALF = 0.02, 0.025
PLATE_RADIUS, PLATE_TOP = 0.06, 0.01
TRAY_INNER, TRAY_BASE_TOP, TRAY_WALL_TOP = 0.055, 0.008, 0.038
GRIPPER_RANGE = ((-0.3, 0.3), (-0.3, 0.3), (0.0, 0.3))   # x, y, z of the fingertip point
YAW_RANGE = (-1.6, 1.6)

COLOURS = {
    "red": "0.85 0.15 0.12 1", "green": "0.15 0.7 0.2 1", "blue": "0.15 0.3 0.9 1",
    "yellow": "0.95 0.8 0.1 1",
}


@dataclass(frozen=True)
class ObjectSpec:
    name: str        # body and joint name, e.g. "red_cube"
    kind: str        # cube | cylinder
    colour: str      # a key of COLOURS

    @property
    def half_height(self) -> float:
        return CUBE_HALF if self.kind == "cube" else CYLINDER_HALF

    @property
    def radius(self) -> float:
        """Footprint radius, for keeping objects apart when sampling layouts."""
        return CUBE_HALF * 1.42 if self.kind == "cube" else CYLINDER_RADIUS


# receptacle -> footprint radius (layout sampling) and resting height of an object's bottom
RECEPTACLE_RADIUS = {"plate": PLATE_RADIUS + 0.005, "tray": TRAY_INNER * 1.42 + 0.015}
RECEPTACLE_SURFACE = {"plate": PLATE_TOP, "tray": TRAY_BASE_TOP}


@dataclass(frozen=True)
class SceneSpec:
    family: str
    objects: tuple[ObjectSpec, ...]
    receptacles: tuple[str, ...]     # plate | tray


def _object_xml(obj: ObjectSpec) -> str:
    if obj.kind == "cube":
        shape = f'type="box" size="{CUBE_HALF} {CUBE_HALF} {CUBE_HALF}"'
    elif obj.kind == "cylinder":
        shape = f'type="cylinder" size="{CYLINDER_RADIUS} {CYLINDER_HALF}"'
    else:
        raise ValueError(f"object {obj.name}: unknown kind {obj.kind!r} (cube or cylinder)")
    return (f'<body name="{obj.name}" pos="0 0 {obj.half_height}"><freejoint name="{obj.name}"/>'
            f'<geom name="{obj.name}" class="object" {shape} rgba="{COLOURS[obj.colour]}"/></body>')


def _receptacle_xml(name: str) -> str:
    if name == "plate":
        return (f'<body name="plate" mocap="true" pos="0 0 {PLATE_TOP / 2}"><geom name="plate" '
                f'class="static" type="cylinder" size="{PLATE_RADIUS} {PLATE_TOP / 2}" '
                f'rgba="0.92 0.92 0.95 1"/></body>')
    if name == "tray":
        h, w, t = (TRAY_WALL_TOP - TRAY_BASE_TOP) / 2, TRAY_INNER + 0.005, 0.005
        zc = TRAY_BASE_TOP + h
        walls = "".join(
            f'<geom class="static" type="box" pos="{x} {y} {zc}" size="{sx} {sy} {h}" '
            f'rgba="0.45 0.28 0.15 1"/>'
            for x, y, sx, sy in ((w, 0, t, w + t), (-w, 0, t, w + t), (0, w, w, t), (0, -w, w, t)))
        return (f'<body name="tray" mocap="true" pos="0 0 0"><geom name="tray" class="static" '
                f'type="box" pos="0 0 {TRAY_BASE_TOP / 2}" size="{w + t} {w + t} '
                f'{TRAY_BASE_TOP / 2}" rgba="0.6 0.4 0.22 1"/>{walls}</body>')
    raise ValueError(f"unknown receptacle {name!r} (plate or tray)")


_GRIPPER = """
<body name="gripper" gravcomp="1">
  <joint name="x" type="slide" axis="1 0 0" range="{rx}" armature="0.1"/>
  <joint name="y" type="slide" axis="0 1 0" range="{ry}" armature="0.1"/>
  <joint name="z" type="slide" axis="0 0 1" range="{rz}" armature="0.1"/>
  <joint name="yaw" type="hinge" axis="0 0 1" range="{ryaw}" armature="0.005"/>
  <geom name="palm" class="gripper" type="box" pos="0 0 0.07" size="0.015 0.06 0.01" mass="0.5"/>
  <camera name="wrist" pos="0 0 0.058" xyaxes="0 -1 0 1 0 0" fovy="80"/>
  <body name="finger_l" gravcomp="1">
    <joint name="finger_l" type="slide" axis="0 1 0" range="0 {fo}" armature="0.05"/>
    <geom name="finger_l" class="finger" type="box" pos="0 0.006 0.03" size="0.012 0.006 0.03"/>
  </body>
  <body name="finger_r" gravcomp="1">
    <joint name="finger_r" type="slide" axis="0 -1 0" range="0 {fo}" armature="0.05"/>
    <geom name="finger_r" class="finger" type="box" pos="0 -0.006 0.03" size="0.012 0.006 0.03"/>
  </body>
</body>"""

_ACTUATORS = """
<actuator>
  <position name="x" joint="x" kp="1500" kv="70" ctrlrange="{rx}"/>
  <position name="y" joint="y" kp="1500" kv="70" ctrlrange="{ry}"/>
  <position name="z" joint="z" kp="1500" kv="70" ctrlrange="{rz}"/>
  <position name="yaw" joint="yaw" kp="20" kv="0.7" ctrlrange="{ryaw}"/>
  <position name="finger_l" joint="finger_l" kp="300" kv="9" ctrlrange="0 {fo}" forcerange="-10 10"/>
  <position name="finger_r" joint="finger_r" kp="300" kv="9" ctrlrange="0 {fo}" forcerange="-10 10"/>
</actuator>"""


def scene_xml(spec: SceneSpec, image_size: int) -> str:
    """The family's MJCF document; ``image_size`` sizes the offscreen buffer."""
    ranges = {"rx": "%g %g" % GRIPPER_RANGE[0], "ry": "%g %g" % GRIPPER_RANGE[1],
              "rz": "%g %g" % GRIPPER_RANGE[2], "ryaw": "%g %g" % YAW_RANGE, "fo": FINGER_OPEN}
    bodies = "".join(_object_xml(o) for o in spec.objects)
    bodies += "".join(_receptacle_xml(r) for r in spec.receptacles)
    return f"""<mujoco model="pushcut_tabletop_{spec.family}">
<compiler angle="radian" autolimits="true"/>
<statistic extent="1" center="0 0 0"/>  <!-- fixes clip planes: znear/zfar scale with it -->
<option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
<visual>
  <global offwidth="{image_size}" offheight="{image_size}"/>
  <quality shadowsize="0" offsamples="0" numslices="16" numstacks="4"/>
  <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  <map znear="0.01" zfar="4"/>
</visual>
<default>
  <geom contype="1" conaffinity="3" friction="1 0.005 0.0001" solref="0.01 1"/>
  <default class="object"><geom condim="4" density="800"/></default>
  <default class="static"><geom contype="2" conaffinity="1"/></default>
  <default class="gripper"><geom rgba="0.3 0.3 0.33 1"/></default>
  <default class="finger"><geom rgba="0.2 0.2 0.22 1" friction="1.5 0.01 0.0001" condim="4"
                           mass="0.02"/></default>
</default>
<worldbody>
  <light directional="true" pos="0 0 1" dir="0.3 0.2 -1" castshadow="false"
         diffuse="0.35 0.35 0.35" specular="0 0 0"/>
  <geom name="table" class="static" type="plane" size="0.45 0.45 0.45" rgba="0.62 0.52 0.4 1"/>
  <camera name="agentview" pos="0.45 0 0.5" xyaxes="0 1 0 -0.721 0 0.692" fovy="40"/>
  {_GRIPPER.format(**ranges)}
  {bodies}
</worldbody>
{_ACTUATORS.format(**ranges)}
</mujoco>"""


def build_model(spec: SceneSpec, image_size: int) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(scene_xml(spec, image_size))
