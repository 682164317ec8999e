"""Numba kernels for 两客一危 vehicle rules: geometry, the per-vehicle driving/rest state machine, and
per vehicle-day track statistics for the regulator KPIs.

Positions are struct-of-arrays sorted by (vehicle, time); ``starts`` (int64, n_vehicles + 1) gives each
vehicle's slice. Times are int64 ns UTC; China-time rules take ``utc_offset_ns`` (Asia/Shanghai has had
no DST since 1991, so a fixed +8 h is exact for every timestamp we can receive).

Events come out as parallel arrays (vehicle, rule, start_ns, end_ns, value, aux, open). The kernel
writes at most ``capacity`` of them and returns the number it found; the caller re-runs with a larger
buffer when that number exceeds the capacity.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from wulian.core.timebase import NS_PER_DAY as _DAY_NS  # a compile-time constant in the kernels

# Rule codes (mirrored by core.vehicles.rules.Rule).
R_OVERSPEED = 1  # value: max speed km/h
R_FATIGUE = 2  # continuous driving over the limit; value: max continuous driving h
R_FATIGUE_24H = 3  # > limit of driving in any 24 h; value: max 24 h driving h
R_NIGHT_COACH = 4  # long-distance coach moving in its ban window (02:00-05:00 China time); value: max km/h
R_OFFLINE_JUMP = 5  # reappeared far from where it went silent; value: km
R_GEOFENCE = 6  # hazardous-goods truck inside a restricted polygon; aux: polygon index; value: max speed
R_ROUTE_DEVIATION = 7  # fixed-route coach off its route; aux: route index; value: max distance km
R_OVERTIME_PARKING = 8  # stopped longer than the limit; value: stopped minutes
R_TERMINAL_ALARM = 9  # JT/T 808 alarm bit set by the terminal; aux: bit number; value: the edition read
R_NIGHT_BAN = 10  # moving in a local night-ban window of its class; value: max speed km/h

# Per-vehicle flag bits (``vflags``).
VF_HAZMAT = 2  # hazardous-goods truck: restricted-area polygons apply

_EARTH_KM = 6371.0088  # IUGG mean Earth radius
_HOUR_NS = 3_600_000_000_000
_DEG = math.pi / 180.0


@njit(cache=True, nogil=True, inline="always")
def haversine_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km between two WGS-84 points (spherical Earth)."""
    p1 = lat1 * _DEG
    p2 = lat2 * _DEG
    dp = p2 - p1
    dl = (lon2 - lon1) * _DEG
    a = math.sin(dp * 0.5) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl * 0.5) ** 2
    return 2.0 * _EARTH_KM * math.asin(math.sqrt(min(1.0, a)))


@njit(cache=True, nogil=True)
def haversine_many(lat1, lon1, lat2, lon2):
    out = np.empty(lat1.shape[0], np.float64)
    for i in range(lat1.shape[0]):
        out[i] = haversine_km(lat1[i], lon1[i], lat2[i], lon2[i])
    return out


@njit(cache=True, nogil=True)
def point_in_polygon(lat, lon, plat, plon, s, e):
    """Is (lat, lon) inside the closed polygon of vertices [s, e)? Points on an edge count as inside.

    Ray casting in the (lon, lat) plane, which is exact enough for city-sized areas; the boundary test
    comes first so that a point on an edge or vertex is a breach regardless of ray parity.
    """
    n = e - s
    if n < 3:
        return False
    inside = False
    j = e - 1
    for i in range(s, e):
        yi = plat[i]
        xi = plon[i]
        yj = plat[j]
        xj = plon[j]
        # On the segment (j, i)?
        cross = (xj - xi) * (lat - yi) - (yj - yi) * (lon - xi)
        if abs(cross) <= 1e-12 * (abs(xj - xi) + abs(yj - yi) + 1e-300):
            if min(xi, xj) <= lon <= max(xi, xj) and min(yi, yj) <= lat <= max(yi, yj):
                return True
        if (yi > lat) != (yj > lat):
            xint = xi + (lat - yi) * (xj - xi) / (yj - yi)
            if lon < xint:
                inside = not inside
        j = i
    return inside


@njit(cache=True, nogil=True, inline="always")
def _seg_dist_km(px, py, ax, ay, bx, by):
    dx = bx - ax
    dy = by - ay
    ll = dx * dx + dy * dy
    t = 0.0
    if ll > 0.0:
        t = ((px - ax) * dx + (py - ay) * dy) / ll
        if t < 0.0:
            t = 0.0
        elif t > 1.0:
            t = 1.0
    qx = ax + t * dx - px
    qy = ay + t * dy - py
    return math.sqrt(qx * qx + qy * qy)


@njit(cache=True, nogil=True)
def _polyline_dist(lat, lon, rlat, rlon, s, e, kx, lo, hi):
    """Min distance (km) from the point to segments [lo, hi) of the polyline [s, e); returns (d, seg).

    Local equirectangular projection with ``kx`` = km per degree of longitude at the route's latitude.
    """
    ky = _EARTH_KM * _DEG
    px = lon * kx
    py = lat * ky
    best = 1e300
    bseg = lo
    if lo < s:
        lo = s
    if hi > e - 1:
        hi = e - 1
    for k in range(lo, hi):
        d = _seg_dist_km(px, py, rlon[k] * kx, rlat[k] * ky, rlon[k + 1] * kx, rlat[k + 1] * ky)
        if d < best:
            best = d
            bseg = k
    if e - s == 1:
        best = haversine_km(lat, lon, rlat[s], rlon[s])
        bseg = s
    return best, bseg


@njit(cache=True, nogil=True)
def distance_to_polyline_km(lat, lon, plat, plon):
    """Distance in km from one point to a polyline (all of it)."""
    kx = _EARTH_KM * _DEG * math.cos(plat.mean() * _DEG)
    d, _ = _polyline_dist(lat, lon, plat, plon, 0, plat.shape[0], kx, 0, plat.shape[0])
    return d


@njit(cache=True, nogil=True, inline="always")
def _usable(la, lo, sp):
    """A fix the rules can use: finite, on the globe, not the (0, 0) of a terminal without a fix."""
    return (-90.0 <= la <= 90.0 and -180.0 <= lo <= 180.0 and not (la == 0.0 and lo == 0.0)
            and 0.0 <= sp < 1000.0)


@njit(cache=True, nogil=True, inline="always")
def _in_window(tod, lo, hi):
    """China time of day ``tod`` in [lo, hi); a window with lo > hi runs across midnight."""
    if lo <= hi:
        return lo <= tod < hi
    return tod >= lo or tod < hi


@njit(cache=True, nogil=True, inline="always")
def _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open, v, rule, t0, t1, val, aux, op):
    if n < cap:
        ev_v[n] = v
        ev_rule[n] = rule
        ev_start[n] = t0
        ev_end[n] = t1
        ev_val[n] = val
        ev_aux[n] = aux
        ev_open[n] = op
    return n + 1


@njit(cache=True, nogil=True)
def vehicle_rules(
    starts, ts, lat, lon, speed, alarm, row_edition,
    # per vehicle
    day_limit_kmh, vflags, exempt_from_ns, exempt_to_ns, route_of, vehicle_edition,
    night_factor, fatigue_night_ns, drive_24h_ns, ban_from_ns, ban_to_ns, local_from_ns, local_to_ns,
    # geometry
    poly_off, poly_lat, poly_lon, poly_bbox, route_off, route_lat, route_lon, route_kx,
    # parameters
    utc_offset_ns, moving_kmh, max_gap_ns, overspeed_min_ns,
    fatigue_day_ns, rest_min_ns, offline_ns, offline_km,
    route_tol_km, route_min_ns, parking_max_ns, default_edition, alarm_mask_of,
    # output
    ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
):
    """Run every vehicle rule over every vehicle's positions; returns the number of events found.

    Rules whose scope depends on the vehicle's class come as per-vehicle arrays, resolved by the caller
    (core.vehicles.rules.detect): ``night_factor`` (1.0 where no night speed rule applies),
    ``fatigue_night_ns`` (equal to the day limit where no night rule applies), ``drive_24h_ns`` (0: off),
    the national coach ban window ``ban_from_ns``/``ban_to_ns`` and a local night ban
    ``local_from_ns``/``local_to_ns`` (China time of day, -1: none; from > to crosses midnight).
    A row's JT/T 808 edition is ``row_edition`` (0: unknown), else its vehicle's ``vehicle_edition``,
    else ``default_edition``; only the alarm bits that edition defines (``alarm_mask_of[edition]``, -1
    for an edition without a table: ValueError) count, and the edition is reported as the value of
    each terminal-alarm episode (taken at its rising edge).

    Driving/rest state machine: the interval from the previous usable point to point i is *driving* when
    that previous point moves (speed > ``moving_kmh``) and the gap is at most ``max_gap_ns``; across a
    longer gap it is driving when the implied speed exceeds ``moving_kmh`` (the terminal went silent on
    the move), else stopped. Continuous driving adds driving intervals; a run of stopped intervals lasting at least
    ``rest_min_ns`` is a rest and resets it (a shorter stop neither resets nor counts). The limit in force
    is the night one when the interval ends in 22:00-06:00 China time. Fatigue opens when continuous
    driving exceeds the limit (strictly) and closes at the start of the qualifying rest.
    The 24 h rule sums driving intervals ending in (t - 24 h, t].
    Unusable fixes (see ``_usable``) and points not later than the previous one are skipped by all rules.
    """
    cap = ev_v.shape[0]
    n = 0
    n_poly = poly_off.shape[0] - 1
    max_len = 0
    for v in range(starts.shape[0] - 1):
        if starts[v + 1] - starts[v] > max_len:
            max_len = starts[v + 1] - starts[v]
    win_t = np.empty(max_len + 1, np.int64)  # driving intervals in the 24 h window (end time, length)
    win_d = np.empty(max_len + 1, np.int64)
    bit_start = np.empty(32, np.int64)
    bit_edition = np.empty(32, np.int64)
    night_lo = 22 * _HOUR_NS
    night_hi = 6 * _HOUR_NS

    for v in range(starts.shape[0] - 1):
        s = starts[v]
        e = starts[v + 1]
        if e <= s:
            continue
        ed_v = vehicle_edition[v] if vehicle_edition[v] > 0 else default_edition
        lim_day = day_limit_kmh[v]
        lim_night = lim_day * night_factor[v]
        fat_night = fatigue_night_ns[v]
        d24_lim = drive_24h_ns[v]
        flags = vflags[v]
        ban = ban_from_ns[v] >= 0
        local_ban = local_from_ns[v] >= 0
        hazmat = (flags & VF_HAZMAT) != 0 and n_poly > 0
        r = route_of[v]
        rs = 0
        re = 0
        kx = 0.0
        if r >= 0:
            rs = route_off[r]
            re = route_off[r + 1]
            kx = route_kx[r]
        seg_hint = rs

        os_in = False
        os_t0 = 0
        os_t1 = 0
        os_max = 0.0
        cont = 0  # continuous driving ns
        fat_in = False
        fat_t0 = 0
        fat_max = 0
        stopped = False
        stop_t0 = 0
        stop_len = 0
        rested = False  # the current stop already reset the continuous driving
        w_head = 0
        w_tail = 0
        w_sum = 0
        d24_in = False
        d24_t0 = 0
        d24_t1 = 0
        d24_max = 0
        nb_in = False
        nb_t0 = 0
        nb_t1 = 0
        nb_max = 0.0
        lb_in = False
        lb_t0 = 0
        lb_t1 = 0
        lb_max = 0.0
        gf_id = -1
        gf_t0 = 0
        gf_t1 = 0
        gf_max = 0.0
        rd_in = False
        rd_t0 = 0
        rd_t1 = 0
        rd_max = 0.0
        prev_bits = 0

        ip = -1  # previous accepted point
        for i in range(s, e):
            t = ts[i]
            sp = speed[i]
            if not _usable(lat[i], lon[i], sp) or (ip >= 0 and t <= ts[ip]):
                continue  # unusable fix or out-of-order/duplicate time: ignored by every rule
            tod = (t + utc_offset_ns) % _DAY_NS
            night = tod >= night_lo or tod < night_hi
            moving = sp > moving_kmh
            gap = False

            # ---- interval (i-1, i]: driving / stopped, fatigue, parking, offline jump
            if ip >= 0:
                dt = t - ts[ip]
                gap = dt > max_gap_ns
                if gap or dt > offline_ns:
                    dist = haversine_km(lat[ip], lon[ip], lat[i], lon[i])
                    if dt > offline_ns and dist > offline_km:
                        n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                                  v, R_OFFLINE_JUMP, ts[ip], t, dist, 0, 0)
                    if gap:
                        drv = dist / (dt / _HOUR_NS) > moving_kmh if dt > 0 else False
                    else:
                        drv = speed[ip] > moving_kmh
                else:
                    drv = speed[ip] > moving_kmh
                if drv:
                    if stopped:
                        if stop_len > parking_max_ns:
                            n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                                      v, R_OVERTIME_PARKING, stop_t0, ts[ip], stop_len / 60e9, 0, 0)
                        stopped = False
                    rested = False
                    cont += dt
                    limit = fat_night if night else fatigue_day_ns
                    if cont > limit:
                        if not fat_in:
                            fat_in = True
                            fat_t0 = t
                            fat_max = cont
                        elif cont > fat_max:
                            fat_max = cont
                    win_t[w_tail] = t
                    win_d[w_tail] = dt
                    w_tail += 1
                    w_sum += dt
                else:
                    if not stopped:
                        stopped = True
                        stop_t0 = ts[ip]
                        stop_len = 0
                    stop_len += dt
                    if not rested and stop_len >= rest_min_ns:
                        rested = True
                        cont = 0
                        if fat_in:
                            n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                                      v, R_FATIGUE, fat_t0, stop_t0, fat_max / _HOUR_NS, 0, 0)
                            fat_in = False
                # 24 h window: drop driving intervals that ended at or before t - 24 h.
                while w_head < w_tail and win_t[w_head] <= t - _DAY_NS:
                    w_sum -= win_d[w_head]
                    w_head += 1
                if d24_lim > 0 and w_sum > d24_lim:
                    if not d24_in:
                        d24_in = True
                        d24_t0 = t
                        d24_max = w_sum
                    if w_sum > d24_max:
                        d24_max = w_sum
                    if drv:
                        d24_t1 = t
                elif d24_in:
                    n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                              v, R_FATIGUE_24H, d24_t0, d24_t1, d24_max / _HOUR_NS, 0, 0)
                    d24_in = False

            # ---- overspeed: over the limit in force, sustained for overspeed_min_ns
            if lim_day > 0.0:
                lim = lim_night if night else lim_day
                over = sp > lim
                if os_in and (gap or not over):
                    if os_t1 - os_t0 >= overspeed_min_ns:
                        n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                                  v, R_OVERSPEED, os_t0, os_t1, os_max, 0, 0)
                    os_in = False
                if over:
                    if not os_in:
                        os_in = True
                        os_t0 = t
                        os_max = sp
                    os_t1 = t
                    if sp > os_max:
                        os_max = sp

            # ---- night bans (the coaches' national one, a local one): one event per night window
            exempt = exempt_from_ns[v] <= t < exempt_to_ns[v]
            if ban:
                in_win = _in_window(tod, ban_from_ns[v], ban_to_ns[v])
                if nb_in and (gap or not in_win):
                    n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                              v, R_NIGHT_COACH, nb_t0, nb_t1, nb_max, 0, 0)
                    nb_in = False
                if in_win and moving and not exempt:
                    if not nb_in:
                        nb_in = True
                        nb_t0 = t
                        nb_max = sp
                    nb_t1 = t
                    if sp > nb_max:
                        nb_max = sp
            if local_ban:
                in_win = _in_window(tod, local_from_ns[v], local_to_ns[v])
                if lb_in and (gap or not in_win):
                    n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                              v, R_NIGHT_BAN, lb_t0, lb_t1, lb_max, 0, 0)
                    lb_in = False
                if in_win and moving and not exempt:
                    if not lb_in:
                        lb_in = True
                        lb_t0 = t
                        lb_max = sp
                    lb_t1 = t
                    if sp > lb_max:
                        lb_max = sp

            # ---- restricted polygons for hazardous-goods trucks
            if hazmat:
                hit = -1
                la = lat[i]
                lo = lon[i]
                for p in range(n_poly):
                    if (poly_bbox[p, 0] <= la <= poly_bbox[p, 1] and poly_bbox[p, 2] <= lo <= poly_bbox[p, 3]
                            and point_in_polygon(la, lo, poly_lat, poly_lon, poly_off[p], poly_off[p + 1])):
                        hit = p
                        break
                if gf_id >= 0 and (gap or hit != gf_id):
                    n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                              v, R_GEOFENCE, gf_t0, gf_t1, gf_max, gf_id, 0)
                    gf_id = -1
                if hit >= 0:
                    if gf_id < 0:
                        gf_id = hit
                        gf_t0 = t
                        gf_max = sp
                    gf_t1 = t
                    if sp > gf_max:
                        gf_max = sp

            # ---- route deviation: search near the last matched segment, full scan only when off-route
            if r >= 0:
                d, k = _polyline_dist(lat[i], lon[i], route_lat, route_lon, rs, re, kx, seg_hint - 2, seg_hint + 3)
                if d > route_tol_km:
                    d, k = _polyline_dist(lat[i], lon[i], route_lat, route_lon, rs, re, kx, rs, re)
                seg_hint = k
                off = d > route_tol_km
                if rd_in and (gap or not off):
                    if rd_t1 - rd_t0 >= route_min_ns:
                        n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                                  v, R_ROUTE_DEVIATION, rd_t0, rd_t1, rd_max, r, 0)
                    rd_in = False
                if off:
                    if not rd_in:
                        rd_in = True
                        rd_t0 = t
                        rd_max = d
                    rd_t1 = t
                    if d > rd_max:
                        rd_max = d

            # ---- the terminal's own alarm bits: rising edge opens, falling edge closes
            ed = row_edition[i] if row_edition[i] > 0 else ed_v
            if ed >= alarm_mask_of.shape[0] or alarm_mask_of[ed] < 0:
                raise ValueError("JT/T 808 edition without an alarm table")
            bits = alarm[i] & alarm_mask_of[ed]
            changed = bits ^ prev_bits
            while changed != 0:
                b = 0
                low = changed & (-changed)
                while (low >> b) != 1:
                    b += 1
                if (bits >> b) & 1:
                    bit_start[b] = t
                    bit_edition[b] = ed
                else:
                    n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                              v, R_TERMINAL_ALARM, bit_start[b], t, float(bit_edition[b]), b, 0)
                changed ^= low
            prev_bits = bits
            ip = i

        # ---- end of this vehicle's data: flush what is still open (open = 1 where it may continue)
        if ip < 0:
            continue
        t_last = ts[ip]
        if os_in and os_t1 - os_t0 >= overspeed_min_ns:
            n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                      v, R_OVERSPEED, os_t0, os_t1, os_max, 0, 1)
        if fat_in:
            n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                      v, R_FATIGUE, fat_t0, stop_t0 if stopped else t_last, fat_max / _HOUR_NS, 0, 1)
        if d24_in:
            n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                      v, R_FATIGUE_24H, d24_t0, d24_t1, d24_max / _HOUR_NS, 0, 1)
        if nb_in:
            n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                      v, R_NIGHT_COACH, nb_t0, nb_t1, nb_max, 0, 1)
        if lb_in:
            n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                      v, R_NIGHT_BAN, lb_t0, lb_t1, lb_max, 0, 1)
        if gf_id >= 0:
            n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                      v, R_GEOFENCE, gf_t0, gf_t1, gf_max, gf_id, 1)
        if rd_in and rd_t1 - rd_t0 >= route_min_ns:
            n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                      v, R_ROUTE_DEVIATION, rd_t0, rd_t1, rd_max, r, 1)
        if stopped and stop_len > parking_max_ns:
            n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                      v, R_OVERTIME_PARKING, stop_t0, t_last, stop_len / 60e9, 0, 1)
        for b in range(32):
            if (prev_bits >> b) & 1:
                n = _emit(n, cap, ev_v, ev_rule, ev_start, ev_end, ev_val, ev_aux, ev_open,
                          v, R_TERMINAL_ALARM, bit_start[b], t_last, float(bit_edition[b]), b, 1)
    return n


@njit(cache=True, nogil=True, inline="always")
def _valid_point(la, lo, sp, st, lat_lo, lat_hi, lon_lo, lon_hi, max_kmh, need_fix):
    if not (lat_lo <= la <= lat_hi and lon_lo <= lo <= lon_hi):  # also rejects NaN
        return False
    if la == 0.0 and lo == 0.0:
        return False
    if not (0.0 <= sp <= max_kmh):
        return False
    if need_fix and (st & 2) == 0:  # JT/T 808 status bit 1: positioned
        return False
    return True


@njit(cache=True, nogil=True)
def vehicle_day_stats(
    starts, ts, lat, lon, speed, status, utc_offset_ns, day0, n_days,
    lat_lo, lat_hi, lon_lo, lon_hi, max_valid_kmh, need_fix, drift_kmh, drift_relocate, complete_step_km,
    n_points, n_valid, n_drift, km_total, km_complete,
):
    """Per vehicle x China day: points, valid points, drift points, mileage and complete mileage.

    Output arrays are (n_vehicles, n_days), filled in place; ``day0`` is the first day number (days since
    1970-01-01 China time). A valid point is inside the bounds, not (0, 0), with a plausible speed and,
    with ``need_fix``, the positioned status bit. A drift point is a valid point whose implied speed from
    the last accepted point exceeds ``drift_kmh``; it is not accepted, unless ``drift_relocate`` drifts
    follow in a row (the reference itself was wrong, so the track relocates). Mileage sums the steps
    between accepted points; a step of at most ``complete_step_km`` counts as complete track.
    """
    for v in range(starts.shape[0] - 1):
        have = False
        rlat = 0.0
        rlon = 0.0
        rt = 0
        run = 0
        for i in range(starts[v], starts[v + 1]):
            d = (ts[i] + utc_offset_ns) // _DAY_NS - day0
            if d < 0 or d >= n_days:
                continue
            n_points[v, d] += 1
            la = lat[i]
            lo = lon[i]
            if not _valid_point(la, lo, speed[i], status[i], lat_lo, lat_hi, lon_lo, lon_hi, max_valid_kmh,
                                need_fix):
                continue
            n_valid[v, d] += 1
            if not have:
                have = True
                rlat = la
                rlon = lo
                rt = ts[i]
                continue
            step = haversine_km(rlat, rlon, la, lo)
            dt_h = (ts[i] - rt) / _HOUR_NS
            drift = step > drift_kmh * dt_h if dt_h > 0 else step > 0.05
            if drift:
                n_drift[v, d] += 1
                run += 1
                if run < drift_relocate:
                    continue
            run = 0
            if not drift:
                km_total[v, d] += step
                if step <= complete_step_km:
                    km_complete[v, d] += step
            rlat = la
            rlon = lo
            rt = ts[i]
