{#
    Monthly revenue: one row per calendar month with sales.

    revenue_mom_growth_pct compares with the previous calendar month. It is null for the
    first month and for a month whose previous calendar month had no sales (growth from
    nothing is undefined), rather than silently comparing with an older month.

    Incremental on month_start (delete+insert): a run rebuilds the months whose lines changed
    after its high-water mark (loaded_at: when its last run wrote a row), and the month after each
    (whose growth compares with it). The changed lines are those the fact wrote since, and those it
    removed: lines deleted, and lines of orders deleted or cancelled (their order date is in the
    base models, which keep deleted and cancelled orders). The pre-hook first deletes a stored month
    that no line is left in: delete+insert rewrites only the months the select returns. (An order whose date moved to another
    month after it was built leaves its old month behind: which date it had is not kept anywhere.
    The weekly full refresh corrects it.)
#}
-- depends_on: {{ ref('base_orders') }}
-- depends_on: {{ ref('base_order_details') }}
{{
    config(
        materialized='incremental',
        unique_key='month_start',
        incremental_strategy='delete+insert',
        on_schema_change='fail',
        pre_hook=[
            "{% if is_incremental() %}
            delete from {{ this }} as stored
            where
                stored.month_start = any(array(
                    select cast(date_trunc('month', orders_of_lines.order_date) as date)
                    from {{ ref('base_orders') }} as orders_of_lines
                    where orders_of_lines.order_id = any(array(
                        {{ orders_with_removed_lines() }}
                    ))
                ))
                and not exists (
                    select 1 from {{ ref('fct_transactions') }} as lines
                    where lines.date_key = any(array(
                        select days.date_key from {{ ref('dim_dates') }} as days
                        where days.month_start = stored.month_start
                    ))
                )
            {% endif %}",
        ],
    )
}}

with

transactions as (
    select * from {{ ref('fct_transactions') }}
),

dates as (
    select * from {{ ref('dim_dates') }}
),

{% if is_incremental() %}
    changed_months as (
        -- lines the fact wrote
        select date_trunc('month', order_date) as month_start
        from {{ ref('fct_transactions') }}
        where {{ written_after('loaded_at', high_water_mark()) }}

        union

        -- lines removed: deleted, or of an order deleted or cancelled
        select date_trunc('month', order_date)
        from {{ ref('base_orders') }}
        where order_id = any(array({{ orders_with_removed_lines() }}))
    ),

    months_to_build as (
        select cast(month_start as date) as month_start from changed_months
        union
        select cast(month_start + interval '1 month' as date) from changed_months
    ),
{% endif %}

-- one row per order, its lines summed: an order has one date and one customer, so a month's
-- orders and customers are counted over orders, not over every line
order_totals as (
    select
        transactions.date_key,
        transactions.order_id,
        transactions.customer_key,
        sum(transactions.quantity) as quantity,
        sum(transactions.amount) as amount
    from transactions
    {% if is_incremental() %}
        -- the lines of those months, their days looked up in the fact's date_key index
        where transactions.date_key = any(array(
            select days.date_key from {{ ref('dim_dates') }} as days
            where days.month_start = any(array(select months_to_build.month_start from months_to_build))
        ))
    {% endif %}
    group by transactions.date_key, transactions.order_id, transactions.customer_key
),

monthly as (
    select
        dates.month_start,
        dates.year,
        dates.month,
        dates.month_name,
        count(*) as total_orders,
        count(distinct order_totals.customer_key) as total_customers,
        sum(order_totals.quantity) as total_quantity,
        sum(order_totals.amount) as revenue
    from order_totals
    inner join dates
        on order_totals.date_key = dates.date_key
    -- lines without an order date belong to no month (assert_revenue_by_months_equals_fct reports them)
    where dates.month_start is not null
    group by dates.month_start, dates.year, dates.month, dates.month_name
),

{% if is_incremental() %}
    -- the stored month before each month rebuilt, when it is not rebuilt itself: its growth's base
    previous_months as (
        select month_start, year, month, month_name, total_orders, total_customers, total_quantity, revenue
        from {{ this }}
        where
            month_start = any(array(select cast(month_start - interval '1 month' as date) from months_to_build))
            and month_start <> all(array(select month_start from months_to_build))
    ),
{% endif %}

months as (
    select * from monthly
    {% if is_incremental() %}
        union all
        select * from previous_months
    {% endif %}
),

with_previous as (
    select
        *,
        lag(month_start) over (order by month_start) as previous_month_start,
        lag(revenue) over (order by month_start) as previous_revenue
    from months
),

final as (
    select
        cast(month_start as date) as month_start,
        cast(year as integer) as year,
        cast(month as integer) as month,
        cast(month_name as text) as month_name,
        cast(total_orders as bigint) as total_orders,
        cast(total_customers as bigint) as total_customers,
        cast(total_quantity as bigint) as total_quantity,
        cast(revenue as bigint) as revenue,
        cast(round(revenue / nullif(total_orders, 0), 2) as numeric(18, 2)) as avg_order_value,
        cast(
            case
                when previous_month_start = cast(month_start - interval '1 month' as date)
                    then round(100.0 * (revenue - previous_revenue) / nullif(previous_revenue, 0), 2)
            end
            as numeric(12, 2)
        ) as revenue_mom_growth_pct,
        -- when this run wrote the row: the high-water mark of the next run
        cast(now() as timestamptz) as loaded_at
    from with_previous
    {% if is_incremental() %}
        where month_start = any(array(select month_start from months_to_build))
    {% endif %}
)

select * from final
